"""Run the user's function in a worker process: crash isolation and hard timeouts.

One worker process per HTTP worker. Calls are pipelined: the HTTP process writes
each call to the worker's pipe as it arrives, the worker runs them one at a time in
order and answers in order, so under load a context switch carries many calls.

- If the function segfaults, calls ``os._exit`` or is killed for memory, only the
  worker dies: the call it was running gets a 500 saying so; calls queued behind it
  had not started, so they are sent again to a new worker (model reloaded).
- A call past its deadline is answered with 504; if it is running, its worker is
  killed and replaced; if it is still queued, the worker skips it (each call carries
  its deadline). A timed-out call never runs again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlcomponent.errors import BadFunctionOutput, EntryPointError, FunctionFailed, Timeout, WorkerDied
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.frames import WorkerConfig, frame, frame_end, load_frame
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


@dataclass(eq=False)
class _Call:
    frame: bytes
    future: asyncio.Future[Any]
    abandoned: bool = False  # answered 504 already; its reply (if any) is dropped
    started_at: float = field(default_factory=time.monotonic)


class WorkerProtocol(asyncio.SubprocessProtocol):
    """The parent's end of the worker protocol: frames parsed as they arrive, no reader task.

    A reply that cannot be unpickled here (say, an object of a class only the worker
    can import) becomes a ``bad_return`` for that call alone; the pipe goes on.
    """

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[WorkerProtocol], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.buffer = bytearray()
        self.transport: Any = None  # asyncio's or uvloop's subprocess transport
        self.hello: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.buffer += data
        while (end := frame_end(self.buffer)) is not None:
            if end == len(self.buffer):  # the usual case: hand the whole buffer over, no copy
                whole, self.buffer = self.buffer, bytearray()
            else:
                whole = self.buffer[:end]
                del self.buffer[:end]
            try:
                message = load_frame(whole)
            except Exception as error:  # noqa: BLE001 - any unpickling failure is that call's alone
                message = ("bad_return", "inference returned outputs the service cannot read back "
                                         f"({type(error).__name__}: {error}); return plain values: numbers, "
                                         "strings, lists, dicts or numpy arrays")
            if self.hello.done():
                self.on_message(message)
            else:
                self.hello.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        """The worker exited and its pipes are closed."""
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("the worker exited before it loaded the function"))
        self.on_lost(self)

    def write(self, frame: bytes) -> None:
        """Queue a frame; the frames of one loop iteration go in one write (one wake-up of the worker)."""
        self._outgoing.append(frame)
        if len(self._outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outgoing = self._outgoing, []
        pipe = self.transport.get_pipe_transport(0) if self.transport is not None else None
        if pipe is not None and not pipe.is_closing():
            pipe.write(frames[0] if len(frames) == 1 else b"".join(frames))

    @property
    def returncode(self) -> int | None:
        code: int | None = self.transport.get_returncode() if self.transport else None
        return code


class ProcessRunner:
    """The HTTP process's side of one worker process."""

    def __init__(self, config: WorkerConfig, name: str, observer: Observer | None = None) -> None:
        self.config = config
        self.name = name
        self.observer = observer or Observer()
        self._pipe: WorkerProtocol | None = None
        self._starting: asyncio.Future[FunctionSpec] | None = None
        self._pending: collections.deque[_Call] = collections.deque()
        self._closing = False
        self._closed: asyncio.Event | None = None

    @property
    def waiting(self) -> int:
        """Calls queued behind the one running."""
        return max(0, len(self._pending) - 1)

    @property
    def pid(self) -> int | None:
        transport = self._pipe.transport if self._pipe else None
        pid: int | None = transport.get_pid() if transport else None
        return pid

    async def start(self) -> FunctionSpec:
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> FunctionSpec:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        env = {**os.environ, **self.config.to_environ()}
        _, pipe = await loop.subprocess_exec(
            lambda: WorkerProtocol(self._on_reply, self._on_lost), sys.executable, "-m", "mlcomponent.runtime.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None, env=env,
            start_new_session=True)
        try:
            hello = await pipe.hello
        except ConnectionError:
            self._starting = None
            raise EntryPointError(f"the worker process {_describe_exit(pipe.returncode)} while loading "
                                  f"{self.config.function}") from None
        if hello[0] == "fatal":
            self._starting = None
            raise EntryPointError(hello[1])
        spec: FunctionSpec = hello[1]
        self._pipe = pipe
        for call in self._pending:  # calls that had not started when the last worker died
            pipe.write(call.frame)
        self.observer.worker_started(time.perf_counter() - started)
        log.info("worker for %s started (pid %s)", self.name, self.pid)
        return spec

    def _on_reply(self, reply: Any) -> None:
        call = self._pending.popleft()
        if not call.abandoned and not call.future.done():
            call.future.set_result(reply)

    def _on_lost(self, pipe: WorkerProtocol) -> None:
        if pipe is not self._pipe:
            return  # a worker that never became the current one (failed start)
        self._pipe = None
        if self._closing:
            for call in self._pending:
                if not call.future.done():
                    call.future.set_exception(WorkerDied("the service is shutting down"))
            if self._closed is not None:
                self._closed.set()
            return
        self._starting = None
        code = pipe.returncode
        if self._pending:
            running = self._pending.popleft()
            if not running.abandoned and not running.future.done():
                running.future.set_exception(WorkerDied(
                    f"the worker process running inference died ({_describe_exit(code)}); it is being "
                    "restarted and the model reloaded"))
        self.observer.worker_restarted()
        log.warning("worker for %s %s; starting a new one", self.name, _describe_exit(code))
        self._starting = asyncio.ensure_future(self._spawn())
        self._starting.add_done_callback(_log_failure)

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any:
        """Run one call; ``deadline`` is a ``loop.time()`` after which it is abandoned (504)."""
        loop = asyncio.get_running_loop()
        wall_deadline = None if deadline is None else time.time() + (deadline - loop.time())
        call = _Call(frame(("call", parameters, inputs, output_fields, wall_deadline)), loop.create_future())
        self._pending.append(call)
        if self._pipe is not None:
            self._pipe.write(call.frame)
        # else: the worker is (re)starting, and _spawn sends every pending call
        try:
            if deadline is None:
                reply = await call.future
            else:
                reply = await asyncio.wait_for(asyncio.shield(call.future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            call.abandoned = True
            pipe = self._pipe
            if self._pending and self._pending[0] is call and pipe is not None and pipe.transport is not None:
                pipe.transport.kill()  # it is running: stop it; _on_lost starts a new worker
            raise Timeout("inference did not finish within the request's deadline; the call was stopped and "
                          "will not be retried") from None
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "raised":
            log.error("inference raised:\n%s", reply[3])
            raise FunctionFailed(f"inference raised {reply[1]}: {reply[2]}")
        if kind == "expired":
            raise Timeout("the request's deadline passed before inference could start; it did not run")
        raise BadFunctionOutput(reply[1])

    async def close(self, grace: float = 5.0) -> None:
        self._closing = True
        pipe = self._pipe
        if pipe is None or pipe.transport is None or pipe.transport.is_closing():
            return
        self._closed = asyncio.Event()
        stdin = pipe.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()  # the worker reads EOF and exits
        try:
            await asyncio.wait_for(self._closed.wait(), grace)
        except TimeoutError:
            pipe.transport.kill()
            await self._closed.wait()


def _log_failure(task: asyncio.Future[FunctionSpec]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("restarting the worker failed: %s", task.exception())
