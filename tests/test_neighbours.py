"""Hostile neighbours in a batch: a request that poisons its merged call fails alone.

Each case runs attackers and innocent requests merged into one call of a real served
function, and asserts both that each attacker gets its own error and that every
innocent request succeeds, never seeing another request's message. Deterministic:
requests that reach the batcher in one loop iteration form one batch; over HTTP and
gRPC a gated call holds the function while the batch fills, and the test opens the gate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from mlcomponent.errors import MLComponentError
from mlcomponent.runtime.dataplane import DataPlane
from tests.support import HTTP
from tests.test_batching import Recorder, calls, infer, rows_body, run_served
from tests.test_grpc import GrpcServer, raw_output, request, serve_grpc

SECRET = 4242.0  # in the attacker's rows: no innocent answer may carry it
ATTACKS = [
    (-1, 400, "row (-1, 4242) is refused: negative rows are not served"),
    (-2, 500, "the worker process running inference died (exited with status 3)"),
    (-3, 500, "inference output 'y': first dimension 0 does not match the batch's 1 rows"),
]


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("BATCH_LOG", str(path))
    return path


@pytest.mark.parametrize(("attack", "status", "says"), ATTACKS, ids=["invalid-input", "os-exit", "wrong-rows"])
def test_a_poisoned_request_fails_alone_and_every_innocent_member_of_its_batch_succeeds(
        tmp_path: Path, log: Path, attack: float, status: int, says: str) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        bodies = [rows_body([[float(i), float(i)]]) for i in range(1, 12)]
        bodies.insert(5, rows_body([[attack, SECRET]]))
        results = await asyncio.gather(*(infer(plane, body) for body in bodies))
        for index, result in enumerate(results):
            if index == 5:
                assert isinstance(result, MLComponentError) and result.status == status
                assert says in result.message and "merged" not in result.message
            else:
                assert not isinstance(result, MLComponentError), result
                value = float(index + 1 if index < 5 else index)
                assert result[0]["y"] == ([1, 2], [2 * value, 2 * value])
    run_served(tmp_path, "batched.poisonable", scenario)
    # one merged call of 12, then halves, depth first: 6 (poisoned) → 3, 3 (poisoned) → 2, 1 (the attacker
    # alone); then the other 6. Seven calls for twelve requests; every innocent request ran at most three times.
    assert calls(log) == [12, 6, 3, 3, 2, 1, 6]


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def queued(server: GrpcServer) -> float:
    for line in HTTP.get(server.http.url + "/metrics").text.splitlines():
        if line.startswith("mlcomponent_requests_queued "):
            return float(line.split()[-1])
    return 0.0


def test_attackers_over_rest_and_grpc_fail_alone_under_hide_errors(tmp_path: Path, log: Path) -> None:
    gate = tmp_path / "gate"
    url = "/v2/models/test-model/infer"
    with serve_grpc(tmp_path, "batched.poisonable", "--hide-errors", env={"BATCH_LOG": str(log)}) as server, \
            ThreadPoolExecutor(16) as pool:
        def rest(first: float) -> httpx.Response:
            return HTTP.post(server.http.url + url, json=rows_body([[first, SECRET if first < 0 else first]]),
                              timeout=120)

        def over_grpc(first: float) -> Any:
            try:
                return server.infer(request(("x", "FP32", [1, 2], [first, SECRET if first < 0 else first])),
                                    timeout=120)
            except grpc.RpcError as error:
                return error

        held = pool.submit(lambda: HTTP.post(server.http.url + url, timeout=120,
                                              json=rows_body([[0.0, 0.0]], gate=str(gate))))
        wait_until(lambda: calls(log) == [1], "the gated call to run")
        innocent_rest = [pool.submit(rest, float(i)) for i in range(1, 7)]
        innocent_grpc = [pool.submit(over_grpc, float(i)) for i in range(7, 10)]
        invalid_rest, exit_rest, invalid_grpc = pool.submit(rest, -1), pool.submit(rest, -2), pool.submit(over_grpc, -1)
        wait_until(lambda: queued(server) == 12, "the twelve requests to wait for their batch")
        gate.touch()
        assert held.result().status_code == 200
        for first, future in enumerate(innocent_rest, start=1):
            answer = future.result()
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [2.0 * first, 2.0 * first]
        for first, pending in enumerate(innocent_grpc, start=7):
            response = pending.result()
            assert not isinstance(response, grpc.RpcError), response
            assert raw_output(response, "y") == [[2.0 * first, 2.0 * first]]
        refused = invalid_rest.result()
        assert refused.status_code == 400  # InvalidInput's message is the client's own, also under --hide-errors
        assert refused.json()["error"] == "row (-1, 4242) is refused: negative rows are not served"
        died = exit_rest.result()
        assert died.status_code == 500 and "4242" not in died.text and "refused" not in died.text
        error = invalid_grpc.result()
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "row (-1, 4242) is refused: negative rows are not served"
    assert calls(log)[:2] == [1, 12]  # the gated call, then all twelve merged into one
