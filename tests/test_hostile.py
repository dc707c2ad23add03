"""A hostile module against the real service (real processes, real sockets): every fault
fails its own call at most, names why, and the next call works.

The module is tests/fixtures/entrypoints/hostile.py; `do` picks the misbehaviour.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import HTTP, Server, call, deadline_us, poll, restarts, serve, wait_ready, write_manifest

INFER = "/v2/models/test-model/infer"
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Isolated, with the manifest's limits (cpu 2, memory 256M), a bearer token and a file-link secret."""
    folder = tmp_path_factory.mktemp("hostile")
    manifest = write_manifest(folder, "hostile.inference", cpu="2")
    with serve(manifest, "--workers", "1", "--auth-token-env", "MLC_TOKEN", data_root=folder / "data",
               env={"MLC_TOKEN": TOKEN, "MLCOMPONENT_FILES_SECRET": "links-secret"}) as server:
        yield server


def test_an_object_the_server_cannot_read_fails_only_its_call(hostile: Server) -> None:
    response = call(hostile, "foreign", headers=AUTH)
    assert response.status_code == 500
    message = response.json()["error"]
    assert "inference output 'y'" in message and "hostile.OnlyHere" in message and "cannot read back" in message
    assert call(hostile, headers=AUTH).status_code == 200  # the pipe goes on: no hang
    assert HTTP.get(hostile.url + "/v2/health/ready").status_code == 200


def test_numpy_at_any_depth_becomes_plain_values(hostile: Server) -> None:
    response = call(hostile, "numpy", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0] == {"name": "y", "datatype": "FP64", "shape": [2, 2],
                                             "data": [1.5, 2.5, 3.5, 4.0]}


def test_an_output_too_deep_to_send_is_a_500_and_the_worker_lives_on(hostile: Server) -> None:
    before = restarts(hostile)
    response = call(hostile, "deep", headers=AUTH)
    assert response.status_code == 500 and "cannot be sent" in response.json()["error"]
    assert call(hostile, headers=AUTH).status_code == 200
    assert restarts(hostile) == before


def test_invalid_input_raised_by_the_function_is_a_400_with_its_words(hostile: Server) -> None:
    refused = call(hostile, "invalid", headers=AUTH)
    assert refused.status_code == 400
    assert refused.json() == {"error": "the table has no rows; send at least one"}
    assert call(hostile, "invalid_subclass", headers=AUTH).status_code == 400


@pytest.mark.parametrize(("do", "params"), [
    ("hog", {"mb": 300}),            # keeps 300 MB: over the limit after the call
    ("spike", {"mb": 400}),          # 400 MB for a moment only: the peak counts, as in a pod
    ("hog_and_wait", {"mb": 400}),   # grows and never returns: the watch from outside stops it
])
def test_a_call_past_the_memory_limit_names_it_and_the_next_call_works(hostile: Server, do: str,
                                                                        params: dict[str, int]) -> None:
    before_pid = call(hostile, "pid", headers=AUTH).json()["outputs"][0]["data"][0]
    before = restarts(hostile)
    response = call(hostile, do, headers=AUTH, **params)
    assert response.status_code == 500, response.text
    message = response.json()["error"]
    assert "went over the memory limit (resourceLimits.memory = 256M, 244 MiB)" in message, message
    after = call(hostile, "pid", headers=AUTH)
    assert after.status_code == 200
    assert after.json()["outputs"][0]["data"][0] != before_pid, "the worker was not replaced"
    assert restarts(hostile) == before + 1


def test_a_kill_by_the_kernel_is_reported_with_the_memory_limit(hostile: Server) -> None:
    response = call(hostile, "oom", headers=AUTH)
    assert response.status_code == 500
    message = response.json()["error"]
    assert "killed by SIGKILL" in message and "resourceLimits.memory = 256M, 244 MiB" in message, message
    assert call(hostile, headers=AUTH).status_code == 200


def test_the_module_never_sees_the_token_and_gets_thread_counts_from_cpu(hostile: Server) -> None:
    names = ["MLC_TOKEN", "MLCOMPONENT_FILES_SECRET", *THREAD_VARIABLES]
    response = call(hostile, "environment", headers=AUTH, names=",".join(names))
    seen = dict(zip(names, response.json()["outputs"][0]["data"], strict=True))
    assert seen["MLC_TOKEN"] == "<unset>" and seen["MLCOMPONENT_FILES_SECRET"] == "<unset>"
    for name in THREAD_VARIABLES:  # cpu "2" over one worker: 2 threads, unless this environment sets them
        assert seen[name] == os.environ.get(name, "2"), name


def test_a_worker_that_closes_its_pipes_fails_its_call_and_is_replaced(hostile: Server) -> None:
    response = call(hostile, "close_fds", headers=AUTH)
    assert response.status_code == 500 and "worker process running inference died" in response.json()["error"]
    assert call(hostile, headers=AUTH).status_code == 200


def test_prints_do_not_corrupt_the_protocol(hostile: Server) -> None:
    assert call(hostile, "print", headers=AUTH).status_code == 200
    assert call(hostile, headers=AUTH).status_code == 200


def test_a_hung_worker_whose_child_holds_its_pipes_is_replaced(tmp_path: Path) -> None:
    """Stopped at the service's --timeout; the child (its own session) goes with it (tests/test_neighbours_worker.py)."""
    pidfile = tmp_path / "escaped.pid"
    try:
        with serve(write_manifest(tmp_path, "hostile.inference"), "--timeout", "2",
                   data_root=tmp_path / "data") as server:
            response = call(server, "escape", pidfile=str(pidfile))
            assert response.status_code == 504, response.text
            poll(lambda: HTTP.get(server.url + "/v2/health/ready").status_code == 200, "ready again")
            assert call(server).status_code == 200
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- --hide-errors


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hidden")
    with serve(write_manifest(folder, "hostile.inference"), "--hide-errors", data_root=folder / "data") as server:
        yield server


def test_hide_errors_gives_the_type_and_request_id_and_logs_the_message(hidden: Server) -> None:
    response = call(hidden, "secret")
    assert response.status_code == 500
    message = response.json()["error"]
    request_id = response.headers["x-request-id"]
    assert "hunter2" not in response.text and "postgres" not in response.text
    assert message.startswith("inference raised RuntimeError;") and request_id in message
    malformed = call(hidden, "foreign")
    assert "OnlyHere" not in malformed.text and "malformed output" in malformed.json()["error"]
    assert call(hidden, "invalid").json() == {"error": "the table has no rows; send at least one"}
    poll(lambda: "hunter2" in hidden.output(), "the message in the log")
    assert any(request_id in line and "hunter2" in line for line in hidden.output().splitlines())


def test_without_hide_errors_the_client_gets_the_message(hostile: Server) -> None:
    response = call(hostile, "secret", headers=AUTH)
    assert response.status_code == 500 and "hunter2" in response.json()["error"]


# --------------------------------------------------------------------------- stuck workers and readiness


def test_readiness_is_503_while_a_worker_stuck_past_its_deadline_is_replaced(tmp_path: Path) -> None:
    """Isolated: the call is stopped at the service's --timeout; until the new worker is up the service is not
    ready, and calls that arrive meanwhile wait for it rather than fail."""
    gate = tmp_path / "import-gate"
    with serve(write_manifest(tmp_path, "hostile.inference"), "--timeout", "5", data_root=tmp_path / "data",
               env={"IMPORT_GATE": str(gate)}) as server:
        wait_ready(server)
        assert call(server, "sleep", seconds=60).status_code == 504
        assert HTTP.get(server.url + "/v2/health/ready").status_code == 503  # the new worker waits at import
        assert HTTP.get(server.url + "/v2/models/test-model/ready").status_code == 503
        with httpx.Client(base_url=server.url, timeout=60) as client:
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(client.post, INFER, json={"inputs": [], "parameters": {"do": "echo"}})
                gate.touch()
                poll(lambda: HTTP.get(server.url + "/v2/health/ready").status_code == 200, "ready again")
                assert waiting.result().status_code == 200


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("in-process")
    log = folder / "calls.log"
    with serve(write_manifest(folder, "hostile.inference"), "--no-isolate", "--max-queue", "1",
               data_root=folder / "data", env={"CALL_LOG": str(log)}) as server:
        yield server, log


def test_no_isolate_a_client_deadline_ends_only_its_wait(in_process: tuple[Server, Path], tmp_path: Path) -> None:
    """The call runs on (it cannot be stopped); the service stays ready and the next call waits its turn."""
    import concurrent.futures

    server, log = in_process
    gate = tmp_path / "gate"
    response = call(server, "gate", path=str(gate), timeout=deadline_us(0.5), tag="impatient")
    assert response.status_code == 504 and "cannot be stopped" in response.json()["error"]
    assert HTTP.get(server.url + "/v2/health/ready").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        innocent = pool.submit(call, server, "echo", tag="innocent")
        poll(lambda: "mlcomponent_requests_queued 1.0" in HTTP.get(server.url + "/metrics").text, "queued")
        gate.touch()
        assert innocent.result().status_code == 200
    assert log.read_text().splitlines()[-2:] == ["gate impatient", "echo innocent"]


def test_no_isolate_a_call_past_the_services_timeout_keeps_the_service_unready_until_it_returns(
        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with serve(write_manifest(tmp_path, "hostile.inference"), "--no-isolate", "--timeout", "1",
               data_root=tmp_path / "data") as server:
        wait_ready(server)
        response = call(server, "gate", path=str(gate))
        assert response.status_code == 504 and "cannot be stopped" in response.json()["error"]
        poll(lambda: HTTP.get(server.url + "/v2/health/ready").status_code == 503, "not ready")
        refused = call(server)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "still running" in refused.json()["error"]
        gate.touch()
        poll(lambda: HTTP.get(server.url + "/v2/health/ready").status_code == 200, "ready after the call returned")
        assert call(server).status_code == 200


def test_no_isolate_invalid_input_is_a_400_too(in_process: tuple[Server, Path]) -> None:
    server, _ = in_process
    refused = call(server, "invalid")
    assert refused.status_code == 400 and refused.json() == {"error": "the table has no rows; send at least one"}


def test_no_isolate_back_pressure_refuses_past_max_queue(in_process: tuple[Server, Path], tmp_path: Path) -> None:
    import concurrent.futures

    server, log = in_process
    gate = tmp_path / "gate"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(call, server, "gate", path=str(gate), tag="running")
        poll(lambda: log.exists() and "gate running" in log.read_text(), "the first call runs")
        queued = pool.submit(call, server, "echo", tag="queued")
        poll(lambda: "mlcomponent_requests_queued 1.0" in HTTP.get(server.url + "/metrics").text, "one queued")
        refused = call(server, tag="refused")
        assert refused.status_code == 503 and "already waiting (--max-queue 1)" in refused.json()["error"]
        gate.touch()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert "echo refused" not in log.read_text()


def test_no_isolate_a_crash_takes_the_process_down(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "behaviours.inference"), "--no-isolate", data_root=tmp_path / "data") as server:
        with pytest.raises(httpx.TransportError):
            HTTP.post(server.url + INFER, json={"inputs": [], "parameters": {"do": "exit"}}, timeout=30)
        assert server.process.wait(timeout=30) != 0
