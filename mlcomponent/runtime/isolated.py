"""Run the user's function in a worker process: crash isolation and hard timeouts.

One worker process per HTTP worker, one call at a time. If the function segfaults,
calls ``os._exit`` or is killed for memory, only the worker dies: that request gets a
500 saying so, and a new worker (model reloaded) is started. A call past its deadline
is answered with 504, its worker is killed and replaced; the call is never re-run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlcomponent.errors import BadFunctionOutput, EntryPointError, FunctionFailed, Timeout, WorkerDied
from mlcomponent.runtime.worker import CONFIG_ENV, HEADER
from mlcomponent.spec.model import FunctionSpec

log = logging.getLogger("mlcomponent.worker")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class ProcessRunner:
    """The parent's side of one worker process."""

    def __init__(self, python_path: str, function: str, model_key: str, env: Mapping[str, str],
                 name: str, on_event: Callable[[str, float], None] | None = None) -> None:
        self.config = {"python_path": python_path, "function": function, "model_key": model_key, "env": dict(env)}
        self.name = name
        self.model_key = model_key
        self.on_event = on_event or (lambda event, value: None)
        self.spec: FunctionSpec | None = None
        self.restarts = 0
        self.calls = 0
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[FunctionSpec] | None = None
        self._lock = asyncio.Lock()
        self.waiting = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> FunctionSpec:
        if self._starting is None or (self._starting.done() and self._process is None):
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> FunctionSpec:
        started = time.perf_counter()
        env = {**os.environ, CONFIG_ENV: json.dumps(self.config)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlcomponent.runtime.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True, limit=2**20)
        try:
            hello = await self._read(process)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await process.wait()
            raise EntryPointError(f"the worker process {_describe_exit(code)} while loading "
                                  f"{self.config['function']}") from None
        if hello[0] == "fatal":
            await process.wait()
            raise EntryPointError(hello[1])
        self._process = process
        self.spec = hello[1]
        self.on_event("worker_started", time.perf_counter() - started)
        log.info("worker %s started (pid %s)", self.name, process.pid)
        return hello[1]

    @staticmethod
    async def _read(process: asyncio.subprocess.Process) -> Any:
        assert process.stdout is not None
        header = await process.stdout.readexactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        return pickle.loads(await process.stdout.readexactly(size))

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any:
        """Run one call; ``deadline`` is a ``loop.time()`` after which it is abandoned (504)."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise Timeout("the request's deadline passed before inference could start")
            try:
                await asyncio.wait_for(self._lock.acquire(), remaining)
            except TimeoutError:
                raise Timeout("the request's deadline passed while it waited for the worker; "
                              "inference did not run") from None
        finally:
            self.waiting -= 1
        try:
            await self.start()
            process = self._process
            assert process is not None and process.stdin is not None
            payload = pickle.dumps(("call", parameters, inputs, output_fields), protocol=pickle.HIGHEST_PROTOCOL)
            process.stdin.write(HEADER.pack(len(payload)) + payload)
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                reply = await asyncio.wait_for(self._roundtrip(process), remaining)
            except TimeoutError:
                await self._replace(process, "timed out")
                raise Timeout(f"inference did not finish within the request's deadline; the call was stopped "
                              "and will not be retried (its worker is restarted)") from None
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                code = await process.wait()
                await self._replace(process, _describe_exit(code))
                raise WorkerDied(f"the worker process running inference died ({_describe_exit(code)}); "
                                 "it is being restarted and the model reloaded") from None
        finally:
            self.calls += 1
            self._lock.release()
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "raised":
            log.error("inference raised:\n%s", reply[3])
            raise FunctionFailed(f"inference raised {reply[1]}: {reply[2]}")
        raise BadFunctionOutput(reply[1])

    async def _roundtrip(self, process: asyncio.subprocess.Process) -> Any:
        assert process.stdin is not None
        await process.stdin.drain()
        return await self._read(process)

    async def _replace(self, process: asyncio.subprocess.Process, why: str) -> None:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if self._process is process:
            self._process = None
            self._starting = None
        self.restarts += 1
        self.on_event("worker_restart", 1)
        log.warning("worker %s %s; starting a new one", self.name, why)
        self._starting = asyncio.ensure_future(self._spawn())
        self._starting.add_done_callback(_log_failure)

    async def close(self, grace: float = 5.0) -> None:
        process = self._process
        self._process = None
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()


def _log_failure(task: asyncio.Task[FunctionSpec]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("restarting the worker failed: %s", task.exception())
