"""Production serving over real processes: concurrency, binary tensors, deadlines, crashes,
shutdown, limits, metrics, request ids and auth."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.http as triton

from tests.support import Server, serve, serve_fixture, write_manifest

INFER = "/v2/models/test-model/infer"
MB = 1024 * 1024


def call(server: Server, do: str = "echo", http_timeout: float = 60, **params: object) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "parameters": {"do": do, **params}}
    return httpx.post(server.url + INFER, json=body, timeout=http_timeout)


def calls_logged(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(params=["isolated", "in-process"])
def behaviours(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    log = tmp_path / "calls.log"
    args = [] if request.param == "isolated" else ["--no-isolate"]
    with serve(write_manifest(tmp_path, "behaviours.inference"), *args, data_root=tmp_path / "data",
               env={"CALL_LOG": str(log)}) as server:
        yield server, log


def test_a_slow_call_does_not_block_health_or_metrics(behaviours: tuple[Server, Path]) -> None:
    server, log = behaviours
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(call, server, "sleep", seconds=2)
        while "sleep" not in " ".join(calls_logged(log)):
            time.sleep(0.01)  # poll until the function is running
        with server.client() as client:
            for path in ("/v2/health/live", "/metrics", "/v2/health/ready"):
                started = time.perf_counter()
                assert client.get(path).status_code == 200
                assert time.perf_counter() - started < 0.1, f"{path} waited for the slow call"
        assert slow.result().status_code == 200


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("isolated")
    log = folder / "calls.log"
    with serve(write_manifest(folder, "behaviours.inference"), "--timeout", "30", data_root=folder / "data",
               env={"CALL_LOG": str(log)}) as server:
        yield server, log


def test_a_call_past_its_deadline_is_504_ran_once_and_the_next_succeeds(isolated: tuple[Server, Path]) -> None:
    server, log = isolated
    before = len(calls_logged(log))
    response = call(server, "sleep", seconds=30, timeout=500_000, tag="slow")  # microseconds, as Triton's
    assert response.status_code == 504, response.text
    assert "did not finish within the request's deadline" in response.json()["error"]
    after = call(server, "echo", tag="next")
    assert after.status_code == 200, after.text
    assert calls_logged(log)[before:] == ["sleep slow", "echo next"]  # the timed-out call ran once


def test_a_worker_that_exits_fails_only_its_request(isolated: tuple[Server, Path]) -> None:
    server, log = isolated
    with ThreadPoolExecutor(2) as pool:
        dying = pool.submit(call, server, "exit", tag="dies")
        normal = pool.submit(call, server, "echo", tag="neighbour")
        died, survived = dying.result(), normal.result()
    assert died.status_code == 500
    assert "the worker process running inference died (exited with status 1)" in died.json()["error"]
    assert survived.status_code == 200
    following = call(server, "echo", tag="after")
    assert following.status_code == 200
    restarts = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
                if line.startswith("mlcomponent_worker_restarts_total ")]
    assert restarts and float(restarts[0].split()[1]) >= 1


@pytest.mark.parametrize(("do", "signal_name"), [("segfault", "SIGSEGV"), ("oom", "SIGKILL")])
def test_a_killed_worker_is_a_500_and_comes_back(isolated: tuple[Server, Path], do: str, signal_name: str) -> None:
    server, _ = isolated
    response = call(server, do)
    assert response.status_code == 500
    assert f"killed by {signal_name}" in response.json()["error"]
    assert call(server).status_code == 200
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_full_queue_is_503_with_retry_after(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    with serve(write_manifest(tmp_path, "behaviours.inference"), "--max-queue", "1", data_root=tmp_path / "data",
               env={"CALL_LOG": str(log)}) as server:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(call, server, "sleep", seconds=1.5)
            while not calls_logged(log):
                time.sleep(0.01)
            second = pool.submit(call, server, "sleep", seconds=0.1)
            while "mlcomponent_requests_queued 1.0" not in httpx.get(server.url + "/metrics").text:
                time.sleep(0.01)
            third = call(server, "echo")
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert "already waiting (--max-queue 1)" in third.json()["error"]
            assert first.result().status_code == 200 and second.result().status_code == 200


# --------------------------------------------------------------------------- binary tensors


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_fixture(tmp_path_factory.mktemp("binary"), "echo.inference") as server:
        yield server


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
    response = httpx.post(echo.url + INFER, content=body,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "must be finite" in response.json()["error"]


def test_binary_size_mismatch_is_a_clear_400(echo: Server) -> None:
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":12}}]}'
    response = httpx.post(echo.url + INFER, content=header + b"\0" * 8,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "runs past the end of the body" in response.json()["error"]


# --------------------------------------------------------------------------- shutdown, limits, load


def test_sigterm_lets_the_in_flight_request_finish_and_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    with serve(write_manifest(tmp_path, "behaviours.inference"), data_root=tmp_path / "data",
               env={"CALL_LOG": str(log)}) as server:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(call, server, "sleep", seconds=1)
            while not calls_logged(log):
                time.sleep(0.01)
            os.killpg(server.process.pid, signal.SIGTERM)
            assert running.result().status_code == 200
        assert server.process.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/v2/health/live", timeout=2)


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

            def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must be found while reading
                for _ in range(100):
                    yield b" " * MB

            try:
                streamed = client.post(INFER, content=chunks())
                assert streamed.status_code == 413
            except httpx.TransportError:
                pass  # the server may close the connection before the client finishes sending
            assert client.get("/v2/health/ready").status_code == 200
            growth = peak_rss(server.process.pid) - before
    assert growth < 20 * MB, f"peak RSS grew by {growth / MB:.1f} MB for a 100 MB body"


def test_limits_on_inputs_and_elements(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "echo.inference"), data_root=tmp_path / "data") as server:
        many = {"inputs": [{"name": f"x{i}", "datatype": "INT32", "shape": [1], "data": [1]} for i in range(65)]}
        response = httpx.post(server.url + INFER, json=many)
        assert response.status_code == 400 and "over the limit of 64 (--max-inputs)" in response.json()["error"]


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


@pytest.mark.timeout(300)
def test_a_bounded_load_has_no_errors_and_no_leak(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "behaviours.inference"), data_root=tmp_path / "data") as server:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}

        def hammer(count: int) -> list[int]:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                return [client.post(INFER, json=body).status_code for _ in range(count)]

        with ThreadPoolExecutor(8) as pool:
            assert set(sum(pool.map(hammer, [250] * 8), [])) == {200}
            warmed = tree_rss(server.process.pid)
            deadline = time.monotonic() + 120
            statuses = sum(pool.map(hammer, [2500] * 8), [])
            assert time.monotonic() < deadline
        after = tree_rss(server.process.pid)
    assert len(statuses) == 20_000 and set(statuses) == {200}
    assert after - warmed < 5 * MB, f"RSS grew by {(after - warmed) / MB:.1f} MB over 20,000 requests"


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
            assert client.post(INFER, json={"inputs": []}, headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = client.post(INFER, json={"inputs": []}, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200


def test_several_workers_each_hold_their_own_model_and_metrics_add_up(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "behaviours.inference"), "--workers", "2", data_root=tmp_path / "data",
               wait_path="/v2/health/ready") as server:
        body = {"inputs": [], "outputs": [{"name": "pid"}]}
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client(base_url=server.url) as fresh:  # a new connection may land on either worker
                pids.add(fresh.post(INFER, json=body).json()["outputs"][0]["data"][0])
        assert len(pids) == 2, "requests never reached a second worker"
        metrics = httpx.get(server.url + "/metrics").text
    served = [line for line in metrics.splitlines()
              if line.startswith('mlcomponent_requests_total{endpoint="infer",status="200",transport="http"}')]
    assert served and float(served[0].split()[1]) >= 2
