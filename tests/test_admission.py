"""Admission by expected wait: a request is refused only when it cannot be answered in time.

The function is held by gates the test opens; the service-time estimate reads a clock the
test sets (in-process), or the lower bound a gate guarantees (over HTTP and gRPC), so
every decision below is exact, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from mlcomponent.errors import MLComponentError, NotReady
from mlcomponent.runtime.admission import Admission, ServiceTime
from mlcomponent.runtime.dataplane import DataPlane
from tests.support import HTTP
from tests.test_batching import Recorder, infer, run_served
from tests.test_grpc import request, serve_grpc


class Clock:
    """A clock the test sets; with ``tick`` each reading also moves it on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.tick = 0.0

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_estimate_follows_a_change_in_service_time_and_counts_pipelined_calls_once() -> None:
    clock = Clock()
    service = ServiceTime(clock)
    assert service.seconds is None
    for _ in range(3):
        sent = service.sent()
        clock.now += 4.0
        assert service.answered(sent) == 0.0
    assert service.seconds == pytest.approx(4.0)
    sent = service.sent()
    clock.now += 1.0
    service.answered(sent)
    assert service.seconds == pytest.approx(13 / 4)  # the mean over the window: three of 4 s, one of 1 s
    for _ in range(7):  # the function got faster: 1 s a call; the window keeps the last 8 answers
        sent = service.sent()
        clock.now += 1.0
        service.answered(sent)
    assert service.seconds == pytest.approx(1.0)
    # pipelined: two calls sent at once, answered one second apart: one second each, the second waited one
    first, second = service.sent(), service.sent()
    clock.now += 1.0
    assert service.answered(first) == 0.0
    clock.now += 1.0
    assert service.answered(second) == pytest.approx(1.0)
    assert service.seconds == pytest.approx(1.0)
    # a burst: ten fast answers arrive together after one long gap; the window averages them
    sent = [service.sent() for _ in range(10)]
    clock.now += 1.0
    for one in sent:
        service.answered(one)
    # the window (half a second at least) reaches back to the answer before: 11 answers in 2 s, not 1 s a call
    assert service.seconds == pytest.approx(2 / 11)


def test_admission_math_budget_deadline_and_retry_after() -> None:
    clock = Clock()
    admission = Admission(10.0, ServiceTime(clock))
    assert admission.over_budget(1000) is None  # no estimate yet: nothing to judge by
    sent = admission.service.sent()
    clock.now += 4.0
    admission.service.answered(sent)
    assert admission.over_budget(1) is None  # 4 s of queue and its own 4 s call fit 10 s
    refusal = admission.over_budget(2)  # 8 + 4 s do not: retry once 2 s have drained
    assert refusal is not None and refusal.reason == "queue_wait" and refusal.retry_after == 2
    assert "2 call(s) ahead × 4 s per call + its own" in refusal.message and "--max-queue-wait" in refusal.message
    assert Admission(1.0, admission.service).over_budget(0) is None  # nothing ahead: it runs, however slow
    spread = [r.retry_after for r in (admission.over_budget(2) for _ in range(10)) if r is not None]
    assert spread == [3, 4, 5, 6, 7, 8, 9, 10, 11, 2]  # the next ten: spread over the 10 s budget, then round again
    assert admission.past_deadline(2, 12.0) is None  # 8 s of wait + its own 4 s call
    late = admission.past_deadline(2, 11.5)
    assert late is not None and late.reason == "deadline" and late.retry_after == 1
    assert admission.past_deadline(0, 0.5) is None  # nothing ahead: it runs, its deadline answers it
    assert admission.past_deadline(5, -1.0) is None  # already over: a timeout (504), not a refusal
    assert Admission(None, admission.service).over_budget(10_000) is None  # --max-queue-wait 0: no budget


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("CALL_LOG", str(path))
    return path


def body(action: str = "echo", **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "parameters": {"do": action, **parameters}}


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def logged(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_request_that_fits_is_queued_one_that_does_not_is_refused_at_once(tmp_path: Path, call_log: Path) -> None:
    clock = Clock()
    gates = [tmp_path / f"gate{i}" for i in range(2)]

    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        plane.admission = Admission(10.0, ServiceTime(clock))
        first = asyncio.ensure_future(infer(plane, body("gate", path=str(gates[0]))))
        await until(lambda: logged(call_log) == 1)
        clock.now = 4.0  # the first call took 4 s
        gates[0].touch()
        assert not isinstance(await first, MLComponentError)
        assert plane.admission.service.seconds == pytest.approx(4.0)
        held = [asyncio.ensure_future(infer(plane, body("gate", path=str(gates[1])))) for _ in range(3)]
        await until(lambda: plane.calls_ahead == 3)  # one running, two queued: 12 s of queue for the next
        with pytest.raises(NotReady) as refused:  # 12 s ahead + its own 4 s > 10 s budget: refused before any I/O
            plane.admit()
        assert refused.value.retry_after == 6 and "--max-queue-wait" in refused.value.message
        plane.admission.max_queue_wait = 60.0
        plane.admit()  # a budget of 60 s: the same queue fits
        in_time = body("echo")
        in_time["parameters"]["timeout"] = 9_500_000  # 9.5 s (microseconds): 12 s of wait + 4 s of call won't fit
        short = await infer(plane, in_time)
        assert isinstance(short, NotReady) and short.retry_after == 7  # 16 s needed, 9.5 s allowed
        assert "deadline" in short.message and logged(call_log) == 2  # refused, not queued to time out
        patient = asyncio.ensure_future(infer(plane, body("echo", tag="patient")))
        await until(lambda: plane.calls_ahead == 4)  # queued
        gates[1].touch()
        for result in [*await asyncio.gather(*held), await patient]:
            assert not isinstance(result, MLComponentError)
        refusals = {reason: recorder.registry.get_sample_value("mlcomponent_refusals_total", {"reason": reason})
                    for reason in ("queue_wait", "deadline")}
        assert refusals == {"queue_wait": 1.0, "deadline": 1.0}
        assert recorder.registry.get_sample_value("mlcomponent_queue_wait_seconds_count") == 5.0
    run_served(tmp_path, "behaviours.inference", scenario)


def test_a_refusal_leaves_no_garbage_for_the_cyclic_collector(tmp_path: Path, call_log: Path) -> None:
    """Under overload refusals come by the thousand a second; each used to leave a cycle (the raising frame
    held its own error), and a collection of them paused the server for tens of milliseconds."""
    gate = tmp_path / "gate"

    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        plane.admission = Admission(1.0, ServiceTime(Clock()))
        plane.admission.service.seconds = 2.0  # a call takes 2 s: anything behind one is over the 1 s budget
        held = asyncio.ensure_future(infer(plane, body("gate", path=str(gate))))
        await until(lambda: plane.calls_ahead == 1)
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                with contextlib.suppress(NotReady):
                    plane.admit()
                assert plane.refuse_now() is not None
            unreachable = gc.collect()
        finally:
            gc.enable()
        assert unreachable == 0
        assert recorder.registry.get_sample_value("mlcomponent_refusals_total", {"reason": "queue_wait"}) == 100.0
        gate.touch()
        assert not isinstance(await held, MLComponentError)
    run_served(tmp_path, "behaviours.inference", scenario)


def test_a_slower_function_is_judged_by_its_new_service_time(tmp_path: Path, call_log: Path) -> None:
    clock = Clock()
    gate = tmp_path / "gate"

    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        plane.admission = Admission(5.0, ServiceTime(clock))
        clock.tick = 0.25  # each reading moves the clock on: a call (sent, answered) of 0.25 s
        for _ in range(3):
            assert not isinstance(await infer(plane, body()), MLComponentError)
        assert plane.admission.service.seconds == pytest.approx(0.25)
        held = [asyncio.ensure_future(infer(plane, body("gate", path=str(gate)))) for _ in range(4)]
        await until(lambda: plane.calls_ahead == 4)
        plane.admit()  # 4 × 0.25 s + its own fits 5 s
        clock.tick = 0.0
        for _ in range(8):  # the function slows down to 3 s a call (a window of 8 answers)
            sent = plane.admission.service.sent()
            clock.now += 3.0
            plane.admission.service.answered(sent)
        with pytest.raises(NotReady):  # 4 × 3 s does not
            plane.admit()
        gate.touch()
        await asyncio.gather(*held)
    run_served(tmp_path, "behaviours.inference", scenario)


def test_over_http_and_grpc_a_refusal_is_503_unavailable_with_retry_after(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    gates = [tmp_path / "gate0", tmp_path / "gate1"]
    with serve_grpc(tmp_path, "behaviours.inference", "--max-queue-wait", "0.001", env={"CALL_LOG": str(log)}) as server, \
            ThreadPoolExecutor(2) as pool:
        url = server.http.url + "/v2/models/test-model/infer"

        def post(payload: dict[str, Any]) -> httpx.Response:
            return HTTP.post(url, json=payload, timeout=120)

        def wait_logged(count: int) -> None:
            deadline = time.monotonic() + 60
            while len(log.read_text().splitlines() if log.exists() else []) < count:
                assert time.monotonic() < deadline
                time.sleep(0.01)

        # A first call that lasts at least one poll of its gate (10 ms): the estimate is over the 1 ms budget.
        first = pool.submit(post, body("gate", path=str(gates[0])))
        wait_logged(1)
        gates[0].touch()
        assert first.result().status_code == 200
        held = pool.submit(post, body("gate", path=str(gates[1])))
        wait_logged(2)
        refused = post(body("echo"))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "over the service's queue-wait budget of 0.001 s (--max-queue-wait)" in refused.json()["error"]
        with pytest.raises(grpc.RpcError) as caught:
            server.infer(request(("x", "INT32", [1], [1]), do="echo"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("retry-after", "1") in caught.value.trailing_metadata()
        assert "--max-queue-wait" in caught.value.details()
        undecodable = request(("x", "INT32", [1], [1]), do="echo")
        undecodable.raw_input_contents.append(b"")  # 2 raw entries for 1 input: INVALID_ARGUMENT once decoded
        with pytest.raises(grpc.RpcError) as caught:
            server.infer(undecodable)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # admission (once) comes before decoding
        gates[1].touch()
        assert held.result().status_code == 200
        assert post(body("echo")).status_code == 200  # nothing ahead: admitted
        metrics = HTTP.get(server.http.url + "/metrics").text
        assert 'mlcomponent_refusals_total{reason="queue_wait"} 3.0' in metrics
        assert "mlcomponent_queue_wait_seconds_count" in metrics
        assert len(log.read_text().splitlines()) == 3  # the refused requests never ran
        # counted, not logged one by one (thousands of lines a second under overload)
        assert [line for line in server.http.output().splitlines() if "-> 503" in line] == []
