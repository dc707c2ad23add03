"""The worker protocol's typed messages, the parent's allow-list and the worker's checked states."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mlcomponent.errors import EntryPointError, Timeout
from mlcomponent.protocol.packed import Packed
from mlcomponent.runtime.frames import WorkerConfig, frame, load_frame
from mlcomponent.runtime.isolated import ProcessRunner, WorkerState, read_message
from mlcomponent.runtime.messages import AllowList, BadReturn, Done, Ready, Refused
from mlcomponent.spec.model import FunctionSpec, TensorSpec
from tests.support import ENTRYPOINTS


class Runs:
    def __init__(self, function: object, *args: object) -> None:
        self.reduced = (function, args)

    def __reduce__(self) -> tuple[object, ...]:
        return self.reduced


def test_the_protocols_types_are_read_back() -> None:
    spec = FunctionSpec(inputs=(TensorSpec("x", "FP32"),), declared=True)
    assert load_frame(bytearray(frame(Ready(spec))), AllowList) == Ready(spec)
    reply = Done([{"name": "y", "datatype": "FP32", "shape": [2], "data": Packed("FP32", bytes(8))},
                  {"name": "z", "data": np.arange(3, dtype=np.float64), "scalar": np.float32(1.5),
                   "dtype": np.dtype("<i4"), "nested": [{"a": (1, 2.0, "s", b"b", None, True)}]}])
    read = load_frame(bytearray(frame(reply)), AllowList)
    assert isinstance(read, Done) and read.outputs[0]["data"] == reply.outputs[0]["data"]
    assert read.outputs[1]["data"].tolist() == [0.0, 1.0, 2.0] and read.outputs[1]["scalar"] == np.float32(1.5)


@pytest.mark.parametrize("reduced", [Runs(time.sleep, 20), Runs(os._exit, 3), Runs(os.system, "true"),
                                     Runs(eval, "1")])
def test_anything_else_is_refused_before_it_runs(reduced: Runs) -> None:
    data = bytearray(frame(Done([{"name": "y", "data": [reduced]}])))
    with pytest.raises(Refused):
        load_frame(data, AllowList)
    message = read_message(data)  # what the runner makes of it: that call's BadReturn, naming the type
    assert isinstance(message, BadReturn) and "inference output 'y'" in message.message
    assert f"{reduced.reduced[0].__module__}" in message.message  # type: ignore[attr-defined]


def test_a_frame_that_is_not_a_message_is_a_bad_return() -> None:
    assert isinstance(read_message(bytearray(frame(("ok", [1])))), BadReturn)
    assert pickle.loads(pickle.dumps(Done([1]))) == Done([1])


def test_worker_states_move_only_as_declared() -> None:
    runner = ProcessRunner(WorkerConfig("/", "m.f", "key", {}), "m")
    assert runner.state is WorkerState.STARTING
    runner._move(WorkerState.IDLE)
    runner._move(WorkerState.RUNNING)
    with pytest.raises(RuntimeError, match="cannot go from running to starting"):
        runner._move(WorkerState.STARTING)
    runner._move(WorkerState.DEAD)
    runner._move(WorkerState.STARTING)
    runner._move(WorkerState.UNAVAILABLE)
    with pytest.raises(RuntimeError, match="cannot go from unavailable to running"):
        runner._move(WorkerState.RUNNING)
    runner._move(WorkerState.CLOSED)
    with pytest.raises(RuntimeError):
        runner._move(WorkerState.STARTING)


@pytest.mark.parametrize("function", ["no_such_module.inference", "echo.no_such_function"])
def test_a_failed_start_leaves_no_transport_to_the_garbage_collector(function: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve``'s start-up check runs in its own event loop, which ends right after a failed start;
    a worker transport still open then would print "Event loop is closed" under the one-line error."""
    unraisable: list[object] = []
    failed: list[str] = []

    async def start() -> None:
        runner = ProcessRunner(WorkerConfig(str(ENTRYPOINTS), function, "", {}), "m")
        try:  # not pytest.raises: its traceback would keep the worker's transport alive past the checks
            await runner.start()
        except EntryPointError:
            failed.append(function)
        await runner.close()

    gc.collect()  # what earlier tests in this process left is theirs, not this test's
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        asyncio.run(start())
        gc.collect()
    assert failed == [function]
    assert [str(w.message) for w in warned if issubclass(w.category, ResourceWarning)] == []
    assert unraisable == []


def test_the_worker_reads_docstrings_without_the_manifests_models() -> None:
    """Every worker start (and restart) imports these; pydantic and the manifest cost it 0.14 s."""
    probe = ("import sys, mlcomponent.runtime.worker, mlcomponent.runtime.entrypoint, mlcomponent.spec.docstring; "
             "print(sorted(m for m in ('pydantic', 'mlcomponent.manifest') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_timeout_counts_from_each_calls_own_start(tmp_path: Path) -> None:
    """One --timeout timer serves every call. Armed by a quick call, it fires while a later call has
    run only part of its --timeout: that call is stopped at its own start + --timeout, not before."""
    gate = tmp_path / "gate"  # never opened: the held call runs until it is stopped

    async def scenario() -> tuple[float, str]:
        runner = ProcessRunner(WorkerConfig(str(ENTRYPOINTS), "behaviours.inference", "", {}), "m", run_limit=1.0)
        await runner.start()
        try:
            await runner.call([{"name": "do", "value": "echo"}], [], [])  # arms the timer for its start + 1 s
            await asyncio.sleep(0.5)
            started = time.monotonic()
            try:
                await runner.call([{"name": "do", "value": "gate"}, {"name": "path", "value": str(gate)}], [], [])
            except Timeout as error:
                return time.monotonic() - started, error.message
            raise AssertionError("the held call was never stopped")
        finally:
            await runner.close()

    ran, message = asyncio.run(scenario())
    assert "--timeout of 1 s" in message
    assert 0.95 <= ran < 30, ran  # its own full second, though the timer first fired after about half of it


def test_a_queued_call_whose_caller_is_gone_is_abandoned_with_or_without_a_deadline(tmp_path: Path) -> None:
    """Behind a held call, three wait: two whose callers are cancelled (a closed connection), one without a
    deadline and one with, and one whose deadline passes (the watchdog: 504). None of them counts as waiting
    any more, and the worker goes on answering in order once the held call ends. (A cancelled call without
    a deadline used to stay counted: its future, cancelled with its caller, looked answered.)"""
    gate = tmp_path / "gate"
    echo = [{"name": "do", "value": "echo"}]

    async def scenario() -> tuple[int, int, Timeout]:
        runner = ProcessRunner(WorkerConfig(str(ENTRYPOINTS), "behaviours.inference", "", {}), "m")
        await runner.start()
        try:
            held = asyncio.ensure_future(runner.call([{"name": "do", "value": "gate"},
                                                      {"name": "path", "value": str(gate)}], [], []))
            loop = asyncio.get_running_loop()
            gone = [asyncio.ensure_future(runner.call(echo, [], [], deadline)) for deadline in (None, loop.time() + 60)]
            expiring = asyncio.ensure_future(runner.call(echo, [], [], loop.time() + 0.3))
            await asyncio.sleep(0)  # every call is queued
            waiting_before = runner.waiting
            for caller in gone:
                caller.cancel()
            await asyncio.gather(*gone, return_exceptions=True)
            expired = (await asyncio.gather(expiring, return_exceptions=True))[0]
            assert not held.done()
            waiting_after = runner.waiting
            gate.touch()
            await held
            assert (await runner.call(echo, [], [], loop.time() + 60))[0]["name"] == "pid"
            return waiting_before, waiting_after, expired
        finally:
            await runner.close()

    waiting_before, waiting_after, expired = asyncio.run(scenario())
    assert (waiting_before, waiting_after) == (3, 0)
    assert isinstance(expired, Timeout) and "did not run" in expired.message, expired
