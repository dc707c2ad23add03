"""Run the user's function in a worker process: crash isolation and hard timeouts.

One worker process per HTTP worker. Calls are pipelined: the HTTP process writes
each call to the worker's pipe as it arrives, the worker runs them one at a time in
order and answers in order, so under load a context switch carries many calls.

- If the function segfaults, calls ``os._exit`` or is killed for memory, only the
  worker dies: the call it was running gets a 500 saying so; calls queued behind it
  had not started, so they are sent again to a new worker (model reloaded).
- A call past its deadline is answered with 504; if it is running, its worker is
  killed and replaced (the service is not ready until the new one is up); if it is
  still queued, the worker skips it (each call carries its deadline). A timed-out call
  never runs again.
- The manifest's memory limit: a call that takes the worker past it is answered with an
  error naming the limit and the worker is replaced (``runtime/memory.py``).
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlcomponent.errors import (
    BadFunctionOutput,
    EntryPointError,
    FunctionFailed,
    InvalidInput,
    MemoryLimitExceeded,
    Timeout,
    WorkerDied,
)
from mlcomponent.runtime import memory
from mlcomponent.runtime.cause import location, user_traceback
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.frames import HEADER, WorkerConfig, frame, frame_end, load_frame
from mlcomponent.spec.model import FunctionSpec

log = logging.getLogger("mlcomponent.worker")
PIPE_GRACE = 2.0  # seconds a dead worker's pipes may stay open (held by a child it left) before they are closed


class _Foreign:
    """Stands in for an object of a class this process cannot import (only to name it in a message)."""

    where = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Lenient(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception:  # noqa: BLE001 - whatever cannot be imported here becomes a stand-in
            return type(name, (_Foreign,), {"where": f"{module}.{name}"})


def _foreign_in(value: Any, depth: int = 0) -> str | None:
    if isinstance(value, _Foreign):
        return value.where
    if depth > 20:
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _foreign_in(item, depth + 1)
        if found:
            return found
    return None


def unreadable_reply(payload: bytes, error: Exception) -> str:
    """Why a reply could not be unpickled here, naming the output (a class the HTTP process lacks, mostly)."""
    advice = "return plain values: numbers, strings, lists, dicts or numpy arrays"
    try:
        reply = _Lenient(io.BytesIO(payload)).load()
    except Exception:  # noqa: BLE001 - not even leniently: say what failed
        reply = None
    outputs = reply[1] if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ok" else None
    for index, item in enumerate(outputs if isinstance(outputs, (list, tuple)) else []):
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            found = _foreign_in(value)
            if found:
                name = item.get("name") if isinstance(item.get("name"), str) else f"outputs[{index}]"
                return (f"inference output {name!r}: its `{key}` holds a {found} object, which the service cannot "
                        f"read back (its class exists only where the function runs); {advice}")
    return f"inference returned outputs the service cannot read back ({type(error).__name__}: {error}); {advice}"


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
        # How this worker ends, when the runner knows better than its exit status:
        self.memory_peak: int | None = None  # over the memory limit (its own report, or our watch)
        self.retiring = False  # it said "memory" and exits by itself: no call of its is running
        self.stopped_because: str | None = None  # we killed it, and why
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
                message = ("bad_return", unreadable_reply(bytes(whole[HEADER.size:]), error))
            if self.hello.done():
                self.on_message(message)
            else:
                self.hello.set_result(message)

    def process_exited(self) -> None:
        """The worker exited; a child it left may hold its pipes open, so close them after a grace."""
        asyncio.get_running_loop().call_later(PIPE_GRACE, self.close_pipes)

    def close_pipes(self) -> None:
        if self.transport is None:
            return
        for fd in (0, 1):
            pipe = self.transport.get_pipe_transport(fd)
            if pipe is not None and not pipe.is_closing():
                pipe.close()

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (its own session: start_new_session)."""
        pid = self.transport.get_pid() if self.transport is not None else None
        if pid is None or self.transport.get_returncode() is not None:
            return  # gone (and reaped: its pid may already be someone else's)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            if self.transport is not None and self.transport.get_returncode() is None:
                self.transport.kill()

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

    def __init__(self, config: WorkerConfig, name: str, observer: Observer | None = None, *,
                 hidden_env: frozenset[str] = frozenset(), memory_label: str | None = None) -> None:
        self.config = config
        self.name = name
        self.observer = observer or Observer()
        self.hidden_env = hidden_env  # never passed to the worker (the bearer token, the file-link secret)
        self.memory_label = memory_label  # the limit as the manifest says it ("256M"), for messages
        self._pipe: WorkerProtocol | None = None
        self._starting: asyncio.Future[FunctionSpec] | None = None
        self._pending: collections.deque[_Call] = collections.deque()
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._replacing_overdue = False  # a call ran past its deadline: not ready until a new worker is up
        self._oom_kills: int | None = None

    @property
    def waiting(self) -> int:
        """Calls queued behind the one running."""
        return max(0, len(self._pending) - 1)

    @property
    def stuck(self) -> bool:
        """A call ran past its deadline and its worker is being stopped and replaced."""
        return self._replacing_overdue

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
        env = {**{k: v for k, v in os.environ.items() if k not in self.hidden_env}, **self.config.to_environ()}
        self._oom_kills = memory.oom_kills()
        _, pipe = await loop.subprocess_exec(
            lambda: WorkerProtocol(self._on_reply, self._on_lost), sys.executable, "-m", "mlcomponent.runtime.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None, env=env,
            start_new_session=True)
        self._watch_memory(pipe)
        try:
            hello = await pipe.hello
        except ConnectionError:
            self._starting = None
            if pipe.memory_peak is not None:
                how = f"went over the memory limit ({self._limit_text()}; it reached {pipe.memory_peak / memory.MB:.0f} MiB)"
            else:
                how = self._describe_death(pipe)[0]
            self._fail_pending(f"the worker process {how} while loading {self.config.function}")
            raise EntryPointError(f"the worker process {how} while loading {self.config.function}") from None
        if hello[0] == "fatal":
            self._starting = None
            self._fail_pending(f"restarting the worker failed: {hello[1]}")
            raise EntryPointError(hello[1])
        spec: FunctionSpec = hello[1]
        self._pipe = pipe
        self._replacing_overdue = False
        for call in self._pending:  # calls that had not started when the last worker died
            pipe.write(call.frame)
        self.observer.worker_started(time.perf_counter() - started)
        log.info("worker for %s started (pid %s)", self.name, self.pid)
        return spec

    def _on_reply(self, reply: Any) -> None:
        if reply[0] == "memory" and self._pipe is not None:
            self._pipe.retiring = True  # it exits now; the calls behind this one have not started
            self._pipe.memory_peak = reply[1]
        call = self._pending.popleft()
        if not call.abandoned and not call.future.done():
            call.future.set_result(reply)

    # ----------------------------------------------------------------------- how a worker ends

    def _fail_pending(self, message: str) -> None:
        """A restart failed: the calls waiting for it will never run."""
        while self._pending:
            call = self._pending.popleft()
            if not call.abandoned and not call.future.done():
                call.future.set_exception(WorkerDied(message))

    def _memory_error(self, peak: int) -> MemoryLimitExceeded:
        return MemoryLimitExceeded(
            f"inference went over the memory limit ({self._limit_text()}): its worker process reached "
            f"{peak / memory.MB:.0f} MiB; it was stopped and is being restarted, and the model reloaded")

    def _limit_text(self) -> str:
        limit = self.config.memory_limit
        if limit is None:
            return "no memory limit is set"
        mib = f"{limit / memory.MB:.0f} MiB"
        return f"resourceLimits.memory = {self.memory_label}, {mib}" if self.memory_label else f"limit {mib}"

    def _describe_death(self, pipe: WorkerProtocol) -> tuple[str, bool]:
        """How the worker ended, and whether that was the kernel's OOM killer (by its count of kills)."""
        code = pipe.returncode
        if pipe.stopped_because is not None:
            return f"stopped: {pipe.stopped_because}", False
        if code != -signal.SIGKILL:
            return _describe_exit(code), False
        kills = memory.oom_kills()
        if kills is not None and self._oom_kills is not None and kills > self._oom_kills:
            return (f"killed by the kernel's out-of-memory killer (SIGKILL): it ran out of memory "
                    f"({self._limit_text()})"), True
        return f"killed by SIGKILL, as the kernel's out-of-memory killer does ({self._limit_text()})", False

    def _death_error(self, pipe: WorkerProtocol) -> WorkerDied:
        if pipe.memory_peak is not None:
            return self._memory_error(pipe.memory_peak)
        how, out_of_memory = self._describe_death(pipe)
        message = (f"the worker process running inference died ({how}); it is being restarted and the model "
                   "reloaded")
        return MemoryLimitExceeded(message) if out_of_memory else WorkerDied(message)

    def _watch_memory(self, pipe: WorkerProtocol) -> None:
        limit = self.config.memory_limit
        pid = pipe.transport.get_pid() if pipe.transport is not None else None
        if limit is None or pid is None or not memory.can_watch():
            return

        def over(rss: int) -> None:
            log.warning("worker for %s (pid %s) uses %.0f MiB, over the memory limit (%s); stopping it",
                        self.name, pid, rss / memory.MB, self._limit_text())
            pipe.memory_peak = rss
            pipe.kill()

        task = asyncio.ensure_future(memory.watch(pid, limit, lambda: bool(self._pending), over))
        task.add_done_callback(_log_failure)

    def _stop_overdue(self, pipe: WorkerProtocol) -> None:
        """The running call is past its deadline: not ready until the worker is replaced."""
        self._replacing_overdue = True
        pipe.stopped_because = "a call ran past its deadline"
        log.warning("a call to %s ran past its deadline; stopping its worker (pid %s) and starting a new one",
                    self.name, self.pid)
        pipe.kill()

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
        error = self._death_error(pipe)
        if self._pending and not pipe.retiring:
            running = self._pending.popleft()
            if not running.abandoned and not running.future.done():
                running.future.set_exception(error)
        self.observer.worker_restarted()
        log.warning("worker for %s ended (%s); starting a new one", self.name, error.message)
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
                self._stop_overdue(pipe)  # it is running: stop it; _on_lost starts a new worker
                raise Timeout("inference did not finish within the request's deadline; the call was stopped "
                              "and will not be retried") from None
            raise Timeout("the request's deadline passed while it waited for the calls ahead of it; it did not "
                          "run and will not") from None
        return self._result(reply)

    def _result(self, reply: Any) -> Any:
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "raised":
            root = self.config.python_path
            log.error("inference raised %s: %s\n%s", reply[1], reply[2], user_traceback(reply[3], root))
            raise FunctionFailed(f"inference raised {reply[1]}: {reply[2]}", exception_type=reply[1],
                                 where=location(reply[3], root))
        if kind == "invalid":
            raise InvalidInput(reply[1])
        if kind == "expired":
            raise Timeout("the request's deadline passed before inference could start; it did not run")
        if kind == "memory":
            raise self._memory_error(reply[1])
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
            pipe.kill()
            await self._closed.wait()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker's supervision failed: %s", task.exception())
