"""No client can hurt another, on the worker's side (batches: tests/test_neighbours.py): each case
runs an attacker and innocent clients at the same time against a real served module
(tests/fixtures/entrypoints/hostile.py), and asserts the attacker's answer AND that every
innocent request succeeds.

Deadlines end a client's wait, never the worker; a worker that cannot come back says so;
memory is charged to the call that used it; replies are read with an allow-list; the
worker's descendants are found and stopped. Gates are files the test creates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from open_inference.grpc import protocol as pb

from tests.support import (
    HTTP,
    call,
    calls_logged,
    deadline_us,
    poll,
    restarts,
    serve,
    wait_ready,
    write_manifest,
)
from tests.test_grpc import GrpcServer, request, serve_grpc

MODEL = "test-model"


def rpc(server: GrpcServer, do: str, **params: Any) -> tuple[grpc.StatusCode, str]:
    """One gRPC call: its status code and its details (OK and '' on success)."""
    try:
        server.infer(request(("x", "INT32", [1], [1]), do=do, **params), timeout=60)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def alive(pid: int) -> bool:
    """Running (a zombie is not: it is only waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return stream.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrpcServer, Path]]:
    """One service that everybody calls (REST and gRPC), memory 256M, the default --timeout (60 s)."""
    folder = tmp_path_factory.mktemp("shared")
    log = folder / "calls.log"
    with serve_grpc(folder, "hostile.inference", env={"CALL_LOG": str(log)}) as grpc_server:
        wait_ready(grpc_server.http)
        yield grpc_server, log


# --------------------------------------------------------------------------- 18.1 deadlines


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_deadlines_over_on_arrival_never_touch_the_worker(shared: tuple[GrpcServer, Path], transport: str) -> None:
    """20 requests with `timeout: 1` (1 µs) interleaved with 20 normal ones: no restart, every normal one 200."""
    server, log = shared
    before = restarts(server.http)

    def one(index: int) -> tuple[bool, Any]:
        attacker = index % 2 == 0
        extra = {"timeout": 1} if attacker else {}
        if transport == "rest":
            return attacker, call(server.http, "echo", tag=f"{transport}-{index}", **extra).status_code
        return attacker, rpc(server, "echo", tag=f"{transport}-{index}", **extra)[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    expired, fine = (504, 200) if transport == "rest" else (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK)
    assert [status for attacker, status in results if attacker] == [expired] * 20
    assert [status for attacker, status in results if not attacker] == [fine] * 20
    assert restarts(server.http) == before
    ran = calls_logged(log)
    assert not any(f"echo {transport}-{index}" in ran for index in range(0, 40, 2)), "an expired call ran"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_deadline_passing_while_the_call_runs_answers_only_that_client(shared: tuple[GrpcServer, Path],
                                                                         transport: str, tmp_path: Path) -> None:
    """The attacker's call runs on (its result discarded); the innocent one queued behind it then runs."""
    server, log = shared
    gate = tmp_path / "gate"
    before = restarts(server.http)
    pid = call(server.http, "pid").json()["outputs"][0]["data"][0]
    with ThreadPoolExecutor(2) as pool:
        if transport == "rest":
            attacker = pool.submit(call, server.http, "gate", path=str(gate), tag=f"attacker-{transport}",
                                   timeout=deadline_us(0.5))
        else:
            attacker = pool.submit(rpc, server, "gate", path=str(gate), tag=f"attacker-{transport}",
                                   timeout=deadline_us(0.5))
        poll(lambda: f"gate attacker-{transport}" in calls_logged(log), "the attacker's call to run")
        innocent = pool.submit(call, server.http, "echo", tag=f"innocent-{transport}")
        answered = attacker.result()
        if transport == "rest":
            assert answered.status_code == 504 and "its result will be discarded" in answered.json()["error"]
        else:
            assert answered[0] == grpc.StatusCode.DEADLINE_EXCEEDED and "discarded" in answered[1]
        assert not innocent.done()  # queued behind the call that still runs (the gate is shut)
        assert HTTP.get(server.http.url + "/v2/health/ready").status_code == 200
        gate.touch()
        assert innocent.result().status_code == 200
    assert restarts(server.http) == before
    assert call(server.http, "pid").json()["outputs"][0]["data"][0] == pid  # the same worker, model kept


def test_only_the_services_timeout_stops_a_running_call_and_its_descendants(tmp_path: Path) -> None:
    """--timeout 3: the running call is stopped by force, its setsid() child with it; innocent calls that
    arrive while its worker is replaced wait for the new one. (One queued behind it from the start shares
    its wait: the --timeout counts from arrival for every call.)"""
    pidfile = tmp_path / "escaped.pid"
    with serve(write_manifest(tmp_path, "hostile.inference"), "--timeout", "3", data_root=tmp_path / "data") as server:
        wait_ready(server)
        with ThreadPoolExecutor(4) as pool:
            attacker = pool.submit(call, server, "escape", pidfile=str(pidfile))
            poll(pidfile.exists, "the attacker's child to start")
            stopped = attacker.result()
            innocents = [pool.submit(call, server, "echo") for _ in range(4)]
            assert stopped.status_code == 504, stopped.text
            assert [i.result().status_code for i in innocents] == [200] * 4
        escaped = int(pidfile.read_text())
        poll(lambda: not alive(escaped), "the escaped child to be stopped with its worker")
        assert restarts(server) == 1
    assert "ran past --timeout (3 s); stopping its worker" in server.output()


# --------------------------------------------------------------------------- 18.2 restarts


def test_a_worker_that_cannot_come_back_says_so_and_comes_back_when_it_can(tmp_path: Path) -> None:
    fault = tmp_path / "mount-gone"
    with serve_grpc(tmp_path, "hostile.inference", env={"IMPORT_FAIL": str(fault)}) as grpc_server:
        server = grpc_server.http
        wait_ready(server)
        fault.touch()  # the next import fails: the restart cannot load the module
        assert call(server, "oom").status_code == 500
        poll(lambda: HTTP.get(server.url + "/v2/health/ready").status_code == 503, "not ready")
        ready = HTTP.get(server.url + "/v2/health/ready").json()
        assert ready["ready"] is False and "could not be restarted" in ready["reason"]
        assert "mount" not in ready["reason"]  # the log has the details; clients get no internals
        refused = call(server, "echo")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "could not be restarted" in refused.json()["error"]
        answer, rpc_call = grpc_server.stub.ModelReady.with_call(pb.ModelReadyRequest(name=MODEL))
        assert answer.ready is False
        assert "could not be restarted" in dict(rpc_call.trailing_metadata())["mlcomponent-not-ready-reason"]
        assert rpc(grpc_server, "echo")[0] == grpc.StatusCode.UNAVAILABLE
        fault.unlink()  # the mount is back: the next attempt succeeds
        poll(lambda: HTTP.get(server.url + "/v2/health/ready").status_code == 200, "ready again")
        assert call(server, "echo").status_code == 200
        assert grpc_server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready is True
    assert "restarting the worker for test-model failed" in server.output()


def test_a_restart_after_a_memory_kill_measures_the_new_worker_only(tmp_path: Path) -> None:
    """The limit (40M) is below the server's own memory: a worker forked from it must not count that."""
    manifest = write_manifest(tmp_path, "hostile.inference", memory="40M")
    with serve(manifest, data_root=tmp_path / "data") as server:
        wait_ready(server)
        assert resident(server.process.pid) > 40_000_000, "the test needs a server larger than the limit"
        with ThreadPoolExecutor(4) as pool:
            attacker = pool.submit(call, server, "spike", mb=80)
            innocents = [pool.submit(call, server, "echo") for _ in range(6)]
            killed = attacker.result()
            assert killed.status_code == 500 and "memory limit" in killed.json()["error"]
            assert [i.result().status_code for i in innocents] == [200] * 6
        assert call(server, "echo").status_code == 200
        assert HTTP.get(server.url + "/v2/health/ready").status_code == 200


def resident(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------- 18.4 memory charged to its call


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_large_reply_is_charged_to_its_own_call(shared: tuple[GrpcServer, Path], transport: str) -> None:
    """150 MB of reply: small while the function runs, over 256M once encoded. The attacker gets the 500."""
    server, _ = shared
    if transport == "rest":
        large = call(server.http, "big_reply", mb=150)
        assert large.status_code == 500 and "went over the memory limit" in large.json()["error"], large.text
    else:
        code, details = rpc(server, "big_reply", mb=150)
        assert code == grpc.StatusCode.INTERNAL and "went over the memory limit" in details, details
    with ThreadPoolExecutor(4) as pool:
        assert [r.status_code for r in pool.map(lambda _: call(server.http, "echo"), range(4))] == [200] * 4
        assert [c for c, _ in pool.map(lambda _: rpc(server, "echo"), range(4))] == [grpc.StatusCode.OK] * 4


def test_memory_a_left_thread_takes_fails_no_later_caller(shared: tuple[GrpcServer, Path], tmp_path: Path) -> None:
    server, _ = shared
    gate, done = tmp_path / "gate", tmp_path / "done"
    before = restarts(server.http)
    assert call(server.http, "leave_thread", gate=str(gate), done=str(done), mb=300).status_code == 200
    gate.touch()
    # the thread takes its memory; the watch may stop the idle worker first (then `done` never comes)
    poll(lambda: done.exists() or restarts(server.http) > before, "the left thread to take its memory")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call(server.http, "echo"), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]


def test_a_double_forked_grandchild_is_counted_and_stopped(shared: tuple[GrpcServer, Path], tmp_path: Path) -> None:
    server, _ = shared
    pidfile = tmp_path / "grandchild.pid"
    before = restarts(server.http)
    attacker = call(server.http, "grandchild_hog", pidfile=str(pidfile), mb=300)
    assert attacker.status_code in (200, 500), attacker.text  # the watch may stop it before it returns
    if attacker.status_code == 500:
        assert "memory limit" in attacker.json()["error"]
    grandchild = int(pidfile.read_text())
    poll(lambda: not alive(grandchild), "the grandchild to be stopped (it holds 300 MB under 256M)")
    poll(lambda: restarts(server.http) == before + 1, "its worker to be replaced")
    with ThreadPoolExecutor(4) as pool:
        assert [r.status_code for r in pool.map(lambda _: call(server.http, "echo"), range(8))] == [200] * 8


def test_descendants_are_stopped_when_the_server_shuts_down(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    with serve(write_manifest(tmp_path, "hostile.inference"), data_root=tmp_path / "data") as server:
        wait_ready(server)
        assert call(server, "grandchild_hog", pidfile=str(pidfile), mb=1).status_code == 200
        grandchild = int(pidfile.read_text())
        assert alive(grandchild)
    poll(lambda: not alive(grandchild), "the grandchild to be stopped with the service")


# --------------------------------------------------------------------------- 18.8 replies read with an allow-list


@pytest.mark.parametrize(("how", "named"), [("sleep", "time.sleep"), ("exit", "posix._exit"),
                                            ("sys_exit", "sys.exit")])
def test_a_reply_that_would_run_code_fails_only_its_call(shared: tuple[GrpcServer, Path], how: str,
                                                         named: str) -> None:
    server, _ = shared
    with ThreadPoolExecutor(4) as pool:
        attacker = pool.submit(call, server.http, "reduce", how=how)
        innocents = [pool.submit(call, server.http, "echo") for _ in range(8)]
        refused = attacker.result()
        assert [i.result().status_code for i in innocents] == [200] * 8
    assert refused.status_code == 500 and named in refused.json()["error"], refused.text
    assert "cannot read back" in refused.json()["error"]
    assert server.http.process.poll() is None
    assert call(server.http, "echo").status_code == 200
    assert os.path.exists(f"/proc/{server.http.process.pid}")


def test_a_reply_that_would_run_code_fails_only_its_call_over_grpc(shared: tuple[GrpcServer, Path]) -> None:
    server, _ = shared
    with ThreadPoolExecutor(4) as pool:
        attacker = pool.submit(rpc, server, "reduce", how="exit")
        innocents = [pool.submit(rpc, server, "echo") for _ in range(6)]
        code, details = attacker.result()
        assert [i.result()[0] for i in innocents] == [grpc.StatusCode.OK] * 6
    assert code == grpc.StatusCode.INTERNAL and "posix._exit" in details and "cannot read back" in details
    assert server.http.process.poll() is None


def test_deadlines_over_on_arrival_with_batching_on(tmp_path: Path) -> None:
    """Batching on (batched.rows merges up to 8 rows): the same 1 µs attackers among innocents, no restart."""
    log = tmp_path / "batches.log"
    with serve(write_manifest(tmp_path, "batched.rows"), "--max-batch-delay", "5", data_root=tmp_path / "data",
               env={"BATCH_LOG": str(log)}) as server:
        wait_ready(server)

        def one(index: int) -> tuple[bool, int]:
            attacker = index % 2 == 0
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [[index, 1]]}],
                    "parameters": {"timeout": 1} if attacker else {}}
            answer = HTTP.post(server.url + f"/v2/models/{MODEL}/infer", json=body, timeout=60)
            if not attacker and answer.status_code == 200:
                assert answer.json()["outputs"][0]["data"] == [index, 1]
            return attacker, answer.status_code

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(40)))
        assert [status for attacker, status in results if attacker] == [504] * 20
        assert [status for attacker, status in results if not attacker] == [200] * 20
        assert restarts(server) == 0
        assert sum(int(line) for line in log.read_text().split()) == 20  # only the innocents' rows ran
