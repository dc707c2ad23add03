"""Production serving over real processes: concurrency, binary tensors, deadlines, crashes,
shutdown, limits, metrics, request ids and auth."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.http as triton

from tests.support import (
    HTTP,
    Server,
    call,
    calls_logged,
    deadline_us,
    free_port,
    metric,
    poll,
    restarts,
    run_cli,
    serve,
    write_manifest,
)

INFER = "/v2/models/test-model/infer"
MB = 1024 * 1024


@pytest.fixture(params=["isolated", "in-process"])
def behaviours(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    log = tmp_path / "calls.log"
    args = [] if request.param == "isolated" else ["--no-isolate"]
    with serve(write_manifest(tmp_path, "behaviours.inference"), *args, data_root=tmp_path / "data",
               env={"CALL_LOG": str(log)}) as server:
        yield server, log


def test_a_slow_call_does_not_block_health_or_metrics(behaviours: tuple[Server, Path], tmp_path: Path) -> None:
    """The call is held open by a gate the test controls: the probes are answered while it runs."""
    server, log = behaviours
    gate = tmp_path / "gate"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(call, server, "gate", path=str(gate))
        poll(lambda: "gate " in calls_logged(log), "the gated call to start")
        with server.client() as client:
            for path in ("/v2/health/live", "/metrics", "/v2/health/ready"):
                assert client.get(path).status_code == 200
        assert not slow.done(), "the call ended before the gate opened"
        gate.touch()
        assert slow.result().status_code == 200


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("isolated")
    log = folder / "calls.log"
    with serve(write_manifest(folder, "behaviours.inference"), "--timeout", "30", data_root=folder / "data",
               env={"CALL_LOG": str(log)}) as server:
        yield server, log


def test_a_call_past_its_deadline_is_504_ran_once_and_the_next_succeeds(isolated: tuple[Server, Path],
                                                                        tmp_path: Path) -> None:
    """The client's deadline ends its wait, not the call: it runs to its end (result discarded), once."""
    server, log = isolated
    gate = tmp_path / "gate"
    before, restarted = len(calls_logged(log)), restarts(server)
    response = call(server, "gate", path=str(gate), timeout=deadline_us(0.5), tag="slow")
    assert response.status_code == 504, response.text
    assert "did not finish within the request's deadline; its result will be discarded" in response.json()["error"]
    gate.touch()
    after = call(server, "echo", tag="next")
    assert after.status_code == 200, after.text
    assert calls_logged(log)[before:] == ["gate slow", "echo next"]  # the timed-out call ran once
    assert restarts(server) == restarted  # and its worker was left alone


def test_a_worker_that_exits_fails_only_its_request(isolated: tuple[Server, Path], tmp_path: Path) -> None:
    """The neighbour is queued behind the dying call before it dies: it is re-sent to the new worker, once."""
    server, log = isolated
    gate = tmp_path / "gate"
    before = restarts(server)
    with ThreadPoolExecutor(2) as pool:
        dying = pool.submit(call, server, "gate_then_exit", path=str(gate), tag="dies")
        poll(lambda: "gate_then_exit dies" in calls_logged(log), "the dying call to start")
        normal = pool.submit(call, server, "echo", tag="neighbour")
        poll(lambda: metric(HTTP.get(server.url + "/metrics").text, "mlcomponent_requests_queued") == 1,
             "the neighbour to be queued behind it")
        gate.touch()
        died, survived = dying.result(), normal.result()
    assert died.status_code == 500
    assert "the worker process running inference died (exited with status 1)" in died.json()["error"]
    assert survived.status_code == 200
    assert calls_logged(log).count("echo neighbour") == 1  # never started before, ran once after
    following = call(server, "echo", tag="after")
    assert following.status_code == 200
    assert restarts(server) == before + 1


def test_a_call_whose_deadline_passes_while_queued_is_504_and_never_runs(isolated: tuple[Server, Path],
                                                                         tmp_path: Path) -> None:
    server, log = isolated
    gate = tmp_path / "gate"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(call, server, "gate", path=str(gate), tag="ahead")
        poll(lambda: "gate ahead" in calls_logged(log), "the call ahead to start")
        late = call(server, "echo", timeout=deadline_us(0.5), tag="late")
        assert late.status_code == 504, late.text
        assert "passed while it waited for the calls ahead of it; it did not run" in late.json()["error"]
        gate.touch()
        assert running.result().status_code == 200
    assert call(server, "echo", tag="next").status_code == 200  # behind the skipped one: the worker skipped it
    assert "echo late" not in calls_logged(log)


@pytest.mark.parametrize(("do", "signal_name"), [("segfault", "SIGSEGV"), ("oom", "SIGKILL")])
def test_a_killed_worker_is_a_500_and_comes_back(isolated: tuple[Server, Path], do: str, signal_name: str) -> None:
    server, _ = isolated
    response = call(server, do)
    assert response.status_code == 500
    assert f"killed by {signal_name}" in response.json()["error"]
    assert call(server).status_code == 200
    assert HTTP.get(server.url + "/v2/health/live").status_code == 200


def test_full_queue_is_503_with_retry_after(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    gate = tmp_path / "gate"
    with serve(write_manifest(tmp_path, "behaviours.inference"), "--max-queue", "1", data_root=tmp_path / "data",
               env={"CALL_LOG": str(log)}) as server:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(call, server, "gate", path=str(gate))
            poll(lambda: calls_logged(log), "the first call to start")
            second = pool.submit(call, server, "echo")
            poll(lambda: "mlcomponent_requests_queued 1.0" in HTTP.get(server.url + "/metrics").text, "one queued")
            third = call(server, "echo")
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert "already waiting (--max-queue 1)" in third.json()["error"]
            gate.touch()
            assert first.result().status_code == 200 and second.result().status_code == 200


# --------------------------------------------------------------------------- binary tensors


@pytest.mark.parametrize(("datatype", "dtype"), [("FP32", np.float32), ("FP64", np.float64), ("INT32", np.int32)])
def test_binary_requests_and_responses_round_trip_with_a_standard_client(echo: Server, datatype: str,
                                                                         dtype: type) -> None:
    client = triton.InferenceServerClient(echo.url.removeprefix("http://"))
    values = (np.arange(12).reshape(3, 4) * 1.5 - 4).astype(dtype)
    tensor = triton.InferInput("x", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=True)
    result = client.infer("test-model", [tensor], outputs=[triton.InferRequestedOutput("x", binary_data=True)])
    assert result.as_numpy("x").dtype == dtype
    assert np.array_equal(result.as_numpy("x"), values)
    assert result.get_output("x")["parameters"]["binary_data_size"] == values.nbytes


def test_binary_str_and_mixed_json_and_binary_outputs(echo: Server) -> None:
    client = triton.InferenceServerClient(echo.url.removeprefix("http://"))
    words = np.array([b"alpha", "βeta".encode(), b""], dtype=np.object_)
    text = triton.InferInput("s", [3], "BYTES")
    text.set_data_from_numpy(words, binary_data=True)
    numbers = triton.InferInput("n", [2], "FP32")
    numbers.set_data_from_numpy(np.array([0.5, -2], dtype=np.float32), binary_data=False)
    result = client.infer("test-model", [text, numbers], outputs=[
        triton.InferRequestedOutput("s", binary_data=True), triton.InferRequestedOutput("n", binary_data=False)])
    assert result.as_numpy("s").tolist() == [b"alpha", "βeta".encode(), b""]
    assert result.get_output("n")["data"] == [0.5, -2.0]  # JSON, as asked
    assert "binary_data_size" in result.get_output("s")["parameters"]


def test_binary_nan_is_refused_by_default(echo: Server) -> None:
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}'
    body = header + np.array([1, np.nan], dtype=np.float32).tobytes()
    response = HTTP.post(echo.url + INFER, content=body,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "must be finite" in response.json()["error"]


def test_binary_size_mismatch_is_a_clear_400(echo: Server) -> None:
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":12}}]}'
    response = HTTP.post(echo.url + INFER, content=header + b"\0" * 8,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "runs past the end of the body" in response.json()["error"]


# --------------------------------------------------------------------------- shutdown, limits, load


def test_sigterm_drains_the_in_flight_request_answers_not_ready_meanwhile_and_exits_0(tmp_path: Path) -> None:
    """One connection carries the in-flight call and, pipelined behind it, a readiness probe: the probe is
    answered during the drain, after SIGTERM, and says 503."""
    log = tmp_path / "calls.log"
    gate = tmp_path / "gate"
    with serve(write_manifest(tmp_path, "behaviours.inference"), data_root=tmp_path / "data",
               env={"CALL_LOG": str(log)}) as server:
        body = json.dumps({"inputs": [], "parameters": {"do": "gate", "path": str(gate)}}).encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         + b"Content-Length: %d\r\n\r\n" % len(body) + body
                         + b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")
            poll(lambda: calls_logged(log), "the in-flight call to start")
            os.killpg(server.process.pid, signal.SIGTERM)
            poll(lambda: "Shutting down" in server.output(), "the drain to begin")
            gate.touch()
            replies = b""
            while replies.count(b"HTTP/1.1 ") < 2 or not replies.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                replies += chunk
        first, _, second = replies.partition(b"HTTP/1.1 503")
        assert first.startswith(b"HTTP/1.1 200"), replies[:300]
        assert second.endswith(b'{"ready":false}'), replies[-300:]
        assert server.process.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            HTTP.get(server.url + "/v2/health/live", timeout=2)


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response off a raw socket: the head, then Content-Length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {data[:300]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_body_over_the_limit_is_413_while_reading(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "echo.inference"), "--max-json-body", "1",
               data_root=tmp_path / "data") as server:
        with server.client() as client:
            assert client.post(INFER, json={"inputs": []}).status_code == 200
            before = peak_rss(server.process.pid)
            declared = client.post(INFER, content=b"x" * (2 * MB))
            assert declared.status_code == 413 and "--max-json-body" in declared.json()["error"]
            assert client.get("/v2/health/ready").status_code == 200
        # No Content-Length, and the body never ends: the 413 can only come from counting while reading.
        host, port = server.url.removeprefix("http://").split(":")
        chunk = b" " * (64 * 1024)
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(17):  # 1 MB + 64 KB, then nothing more (no last chunk)
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            reply = read_response(sock)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
        assert b"--max-json-body" in reply
        assert HTTP.get(server.url + "/v2/health/ready").status_code == 200
        growth = peak_rss(server.process.pid) - before
    assert growth < 20 * MB, f"peak RSS grew by {growth / MB:.1f} MB for over-limit bodies"


def test_limits_on_inputs_and_elements(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "echo.inference"), "--max-elements", "10",
               data_root=tmp_path / "data") as server:
        many = {"inputs": [{"name": f"x{i}", "datatype": "INT32", "shape": [1], "data": [1]} for i in range(65)]}
        response = HTTP.post(server.url + INFER, json=many)
        assert response.status_code == 400 and "over the limit of 64 (--max-inputs)" in response.json()["error"]
        fits = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [10], "data": list(range(10))}]}
        assert HTTP.post(server.url + INFER, json=fits).status_code == 200
        over = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [11], "data": list(range(11))}]}
        response = HTTP.post(server.url + INFER, json=over)
        assert response.status_code == 400
        assert response.json()["error"] == ("input 'x' has 11 elements, over the limit of 10 per input "
                                            "(--max-elements)")


# --------------------------------------------------------------------------- observability, auth


def test_metrics_move_and_request_ids_are_echoed_and_logged(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "behaviours.inference"), "--log-format", "json",
               data_root=tmp_path / "data") as server:
        with server.client() as client:
            before = client.get("/metrics").text
            response = client.post(INFER, json={"inputs": [], "parameters": {"do": "nothing-special"}},
                                   headers={"X-Request-ID": "trace-me-42"})
            assert response.headers["x-request-id"] == "trace-me-42"
            generated = client.get("/v2/health/live").headers["x-request-id"]
            assert generated and generated != "trace-me-42"
            client.post(INFER, content=b"{bad")
            failed = client.post(INFER, json={"inputs": [], "parameters": {"do": "raise"}},
                                 headers={"X-Request-ID": "broken-one"})
            assert failed.status_code == 500
            after = client.get("/metrics").text
    assert 'mlcomponent_requests_total{endpoint="infer",status="200",transport="http"} 1.0' in after
    assert 'mlcomponent_requests_total{endpoint="infer",status="400",transport="http"} 1.0' in after
    assert 'mlcomponent_requests_total{endpoint="infer",status="200",transport="http"}' not in before
    assert 'mlcomponent_requests_total{endpoint="infer",status="500",transport="http"} 1.0' in after
    assert "mlcomponent_inference_seconds_count 2.0" in after
    assert 'mlcomponent_request_seconds_bucket{endpoint="infer",le="+Inf",transport="http"} 3.0' in after
    logged = [json.loads(line) for line in server.output().splitlines() if '"request_id": "broken-one"' in line]
    assert logged and all(entry["level"] == "error" for entry in logged)
    assert any("asked to fail" in entry["message"] for entry in logged)


def test_bearer_token_guards_data_endpoints_only(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "echo.inference"), "--auth-token-env", "MLC_TOKEN",
               data_root=tmp_path / "data", env={"MLC_TOKEN": "s3cret"}) as server:
        with server.client() as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 200
            assert client.get("/metrics").status_code == 200
            refused = client.post(INFER, json={"inputs": []})
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert client.get("/v2/models/test-model").status_code == 401
            for wrong in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearer", "Bearer s3cret2"):
                assert client.post(INFER, json={"inputs": []}, headers={"Authorization": wrong}).status_code == 401
            for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive (RFC 7235)
                ok = client.post(INFER, json={"inputs": []}, headers={"Authorization": f"{scheme} s3cret"})
                assert ok.status_code == 200, scheme


def test_a_token_file_guards_multipart_uploads_and_downloads(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    auth = {"Authorization": "Bearer from-a-file"}
    upload = {"files": {"doc": ("a.txt", b"guarded", "text/plain")},
              "data": {"request": '{"outputs": [{"name": "copy", "parameters": {"datatype": "FILE"}}]}'}}
    with serve(write_manifest(tmp_path, "files_echo.inference"), "--auth-token-file", str(token_file),
               data_root=tmp_path / "data") as server:
        with server.client() as client:
            refused = client.post(INFER, **upload)  # type: ignore[arg-type]
            assert refused.status_code == 401
            box = tmp_path / "data" / "boxes" / "users"
            assert not box.exists() or not any(p.is_file() for p in box.rglob("*")), "a refused upload was stored"
            sent = client.post(INFER, headers=auth, **upload)  # type: ignore[arg-type]
            assert sent.status_code == 200, sent.text
            url = sent.json()["outputs"][0]["parameters"]["url"]
            assert client.get(url).status_code == 401
            assert client.get(url, headers=auth).content == b"guarded"


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["--auth-token-env", "MLC_NO_SUCH_TOKEN"], {}, "the environment variable MLC_NO_SUCH_TOKEN is not set"),
    (["--auth-token-env", "MLC_EMPTY_TOKEN"], {"MLC_EMPTY_TOKEN": " "}, "the environment variable MLC_EMPTY_TOKEN is "
                                                                         "empty"),
    (["--auth-token-file", "{folder}/empty"], {}, "/empty is empty; put the bearer token in it"),
])
def test_a_missing_or_empty_token_refuses_to_start_and_names_it(tmp_path: Path, args: list[str],
                                                                 env: dict[str, str], needle: str) -> None:
    """(A token file that does not exist is refused by the option itself: tests/test_cli_mistakes.py.)"""
    (tmp_path / "empty").write_text("\n")
    manifest = write_manifest(tmp_path, "echo.inference")
    result = run_cli("serve", str(manifest), "--port", str(free_port()), *[a.format(folder=tmp_path) for a in args], env=env)
    assert result.returncode == 1
    assert needle in result.stderr and result.stderr.startswith("cannot start: --auth-token-"), result.stderr


# --------------------------------------------------------------------------- several workers


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("two-workers")
    log = folder / "calls.log"
    with serve(write_manifest(folder, "behaviours.inference"), "--workers", "2", data_root=folder / "data",
               env={"CALL_LOG": str(log)}, wait_path="/v2/health/ready") as server:
        yield server, log


def pid_of(client: httpx.Client) -> int:
    """The inference worker behind this client's connection (one HTTP worker each)."""
    response = client.post(INFER, json={"inputs": [], "outputs": [{"name": "pid"}]})
    return int(response.json()["outputs"][0]["data"][0])


def test_several_workers_each_hold_their_own_model_and_metrics_add_up(two_workers: tuple[Server, Path]) -> None:
    server, _ = two_workers
    name = 'mlcomponent_requests_total{endpoint="infer",status="200",transport="http"}'
    before = metric(HTTP.get(server.url + "/metrics").text, name) or 0
    served: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(served) < 2 or sum(served.values()) < 20:
        assert time.monotonic() < deadline, "new connections never reached both workers"
        with httpx.Client(base_url=server.url, timeout=60) as client:  # a new connection may land on either
            pid = pid_of(client)
            served[pid] = served.get(pid, 0) + 1
    total = (metric(HTTP.get(server.url + "/metrics").text, name) or 0) - before
    assert total == sum(served.values()), served  # every request of both workers, exactly
    assert total > max(served.values())  # more than either worker served: the scrape summed both


def test_every_worker_publishes_its_queue_and_a_dead_worker_stops_counting(two_workers: tuple[Server, Path],
                                                                           tmp_path: Path) -> None:
    """Worker A holds a call and queues another; scrapes served by worker B see A's queue. Then A is killed:
    after its restart its in-flight requests no longer count."""
    server, log = two_workers
    gate = tmp_path / "gate"
    body = {"inputs": [], "parameters": {"do": "gate", "path": str(gate)}}
    clients: list[httpx.Client] = []

    def new_client() -> httpx.Client:
        clients.append(httpx.Client(base_url=server.url, timeout=60))
        return clients[-1]

    try:
        with ThreadPoolExecutor(2) as pool:
            by_pid: dict[int, httpx.Client] = {}
            deadline = time.monotonic() + 60
            while len(by_pid) < 2:  # one connection to each worker; A's gets the gated call at once
                assert time.monotonic() < deadline, "new connections never reached both workers"
                client = new_client()
                by_pid.setdefault(pid_of(client), client)
            (pid_a, to_a), (_, to_b) = by_pid.items()
            held = pool.submit(to_a.post, INFER, json=body)

            def scrape() -> str:
                return to_b.get("/metrics").text  # always worker B (and kept alive by these scrapes)

            poll(lambda: scrape() and "gate " in calls_logged(log), "worker A to run the gated call")
            while True:  # a new connection lands on A (queued behind the gate) or on B (answered at once)
                queued = pool.submit(new_client().post, INFER, json={"inputs": [], "parameters": {"do": "echo"}})
                poll(lambda call=queued: call.done() or metric(scrape(), "mlcomponent_requests_queued") == 1,
                     "a call queued on A (seen through B), or answered by B")
                if not queued.done():
                    break
            assert metric(scrape(), "mlcomponent_requests_in_flight") == 3  # A's two, and this scrape on B
            os.kill(psutil.Process(pid_a).ppid(), signal.SIGKILL)  # A's HTTP worker; uvicorn starts another
            with pytest.raises(httpx.TransportError):
                held.result()
            with pytest.raises(httpx.TransportError):
                queued.result()
            poll(lambda: metric(scrape(), "mlcomponent_requests_in_flight") == 1, "the dead worker's gauges dropped")
            assert metric(scrape(), "mlcomponent_requests_queued") == 0
    finally:
        gate.touch()  # the orphaned inference worker finishes its call and exits
        for client in clients:
            client.close()
