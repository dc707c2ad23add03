"""Run the user's function in a worker process: crash isolation and hard timeouts.

One worker process per HTTP worker. Calls are pipelined: the HTTP process writes
each call to the worker's pipe as it arrives, the worker runs them one at a time in
order and answers in order, so under load a context switch carries many calls. The
call at the head of the queue is the one running: the parent knows what runs from
the order alone (``_Call.started_at``), with no extra message per call.

- If the function segfaults, calls ``os._exit`` or is killed for memory, only the
  worker dies: the call it was running gets a 500 saying so; calls queued behind it
  had not started, so they are sent again to a new worker (model reloaded).
- A client's deadline ends that client's wait, never the worker: past it, a call not yet
  started is answered 504 and skipped (each call carries its deadline; one already over
  on arrival never reaches the worker); a running one is answered 504 and its result
  discarded when it comes. Only the service's own ``--timeout`` (``run_limit``: how
  long one call may *run*) stops a running call by force: its worker is killed and
  replaced (the service is not ready until the new one is up).
- A worker that cannot be restarted is retried with backoff; meanwhile the runner is
  ``unavailable`` (readiness says why, calls get 503 with ``Retry-After`` at once).
- The manifest's memory limit: a call that takes the worker past it is answered with an
  error naming the limit and the worker is replaced (``runtime/memory.py``).
- The worker's descendants are stopped with it (``runtime/tree.py``).
- Replies are read with an allow-list (``runtime/messages.py``): a reply that names any
  other type fails its own call and never runs code here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import io
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlcomponent.errors import (
    BadFunctionOutput,
    EntryPointError,
    FunctionFailed,
    InvalidInput,
    MemoryLimitExceeded,
    MLComponentError,
    NotReady,
    Timeout,
    WorkerDied,
)
from mlcomponent.runtime import memory
from mlcomponent.runtime.cause import location, user_traceback
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.frames import HEADER, WorkerConfig, frame, frame_end, load_frame
from mlcomponent.runtime.messages import (
    REPLIES,
    AllowList,
    BadReturn,
    Call,
    Done,
    Expired,
    Fatal,
    Invalid,
    Lenient,
    OverMemory,
    Raised,
    Ready,
    Refused,
    foreign_in,
)
from mlcomponent.runtime.tree import kill_descendants
from mlcomponent.spec.model import FunctionSpec
from mlcomponent.timers import EarliestTimer

log = logging.getLogger("mlcomponent.worker")
IDLE_LOOK_AFTER = 0.005  # seconds idle before the parent looks at the worker's tree ahead of a call (13 system
# calls: a look before every back-to-back call cost ~200 µs per request at one connection)
PIPE_GRACE = 2.0  # seconds a dead worker's pipes may stay open (held by a child it left) before they are closed
RESTART_DELAY = 0.5  # seconds before the first retry of a failed restart; doubled per failure
RESTART_DELAY_MAX = 15.0


def unreadable_reply(payload: bytes, error: Exception) -> str:
    """Why a reply was refused here, naming the output and the type (read again leniently: nothing runs)."""
    advice = "return plain values: numbers, strings, lists, dicts or numpy arrays"
    try:
        reply = Lenient(io.BytesIO(payload)).load()
    except Exception:  # noqa: BLE001 - not even leniently: say what failed
        reply = None
    outputs = reply.outputs if isinstance(reply, Done) else None
    for index, item in enumerate(outputs if isinstance(outputs, (list, tuple)) else []):
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            found = foreign_in(value)
            if found:
                name = item.get("name") if isinstance(item.get("name"), str) else f"outputs[{index}]"
                return (f"inference output {name!r}: its `{key}` holds a {found} object, which the service cannot "
                        f"read back (only plain values cross from the worker); {advice}")
    where = f"a {error.where} object" if isinstance(error, Refused) else f"({type(error).__name__}: {error})"
    return f"inference returned outputs the service cannot read back {where}; {advice}"


def read_message(whole: bytearray) -> Any:
    """One frame from the worker, decoded in the one place that does: a typed message, or the
    ``BadReturn`` that fails its call when the frame holds anything else."""
    try:
        message = load_frame(whole, AllowList)
    except Exception as error:  # noqa: BLE001 - any failure to read is that call's alone
        return BadReturn(unreadable_reply(bytes(whole[HEADER.size:]), error))
    if isinstance(message, (*REPLIES, Ready, Fatal)):
        return message
    return BadReturn(f"the worker sent a {type(message).__name__}, which is not a message of the worker protocol")


class WorkerState(enum.Enum):
    """Where the runner's worker is; ``ProcessRunner._move`` allows only the transitions below."""

    STARTING = "starting"  # a worker process is loading the function
    IDLE = "idle"  # loaded, no call of ours in it
    RUNNING = "running"  # loaded, running the call at the head of the queue (more may wait behind it)
    DEAD = "dead"  # it ended; a new one starts at once
    UNAVAILABLE = "unavailable"  # a (re)start failed; retried with backoff, calls refused (503) meanwhile
    CLOSED = "closed"  # the service is shutting down


_MOVES: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.RUNNING, WorkerState.UNAVAILABLE,
                                     WorkerState.CLOSED}),
    WorkerState.IDLE: frozenset({WorkerState.RUNNING, WorkerState.DEAD, WorkerState.CLOSED}),
    WorkerState.RUNNING: frozenset({WorkerState.IDLE, WorkerState.DEAD, WorkerState.CLOSED}),
    WorkerState.DEAD: frozenset({WorkerState.STARTING, WorkerState.CLOSED}),
    WorkerState.UNAVAILABLE: frozenset({WorkerState.STARTING, WorkerState.CLOSED}),
    WorkerState.CLOSED: frozenset({WorkerState.CLOSED}),
}


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass(eq=False, slots=True)
class _Call:
    frame: bytes
    future: asyncio.Future[Any]
    abandoned: bool = False  # answered 504 already; its reply (if any) is dropped
    started_at: float | None = None  # loop.time() it reached the head of the queue: the worker runs it
    deadline: float | None = None  # loop.time() after which its caller stops waiting (504)


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
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # exited, pipes closed
        # How this worker ends, when the runner knows better than its exit status:
        self.memory_peak: int | None = None  # over the memory limit (its own report, or our watch)
        self.retiring = False  # it said OverMemory and exits by itself: no call of its is running
        self.stopped_because: str | None = None  # we killed it, and why
        self.killed = False  # SIGKILL sent: no call is written to it any more
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
            message = read_message(whole)
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
        """SIGKILL the worker and everything it started: its descendants first (while it lives they
        stay in its tree, ``runtime/tree.py``), then its process group (start_new_session)."""
        self.killed = True
        pid = self.transport.get_pid() if self.transport is not None else None
        if pid is None or self.transport.get_returncode() is not None:
            return  # gone (and reaped: its pid may already be someone else's)
        kill_descendants(pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            if self.transport is not None and self.transport.get_returncode() is None:
                self.transport.kill()

    def connection_lost(self, exc: Exception | None) -> None:
        """The worker exited and its pipes are closed."""
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("the worker exited before it loaded the function"))
        if not self.ended.done():
            self.ended.set_result(None)
        self.on_lost(self)

    async def reap(self) -> None:
        """Kill a worker that failed to start and wait until it is gone and its transport closed: a
        start-up check's event loop ends right after, and a transport left to the garbage collector
        then prints a traceback ("Event loop is closed") under the one-line error."""
        self.kill()
        with contextlib.suppress(TimeoutError):  # a child holding its pipes: they close after PIPE_GRACE
            await asyncio.wait_for(asyncio.shield(self.ended), PIPE_GRACE + 1)
        if self.transport is not None:
            self.transport.close()

    def write(self, frame: bytes) -> None:
        """Send a frame. The frames of one loop iteration go in one write: one wake-up of the worker
        for a burst. (Writing at once to an idle worker saved ~25 µs a request at one connection
        but cost ~90 µs at eight, where each call then woke the worker alone: not kept.)"""
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
    """The HTTP process's side of one worker process.

    ``run_limit``: seconds one call may run before its worker is killed (the service's
    ``--timeout``; None: no limit). A client's own deadline never kills the worker.
    """

    def __init__(self, config: WorkerConfig, name: str, observer: Observer | None = None, *,
                 hidden_env: frozenset[str] = frozenset(), memory_label: str | None = None,
                 run_limit: float | None = None) -> None:
        self.config = config
        self.name = name
        self.observer = observer or Observer()
        self.hidden_env = hidden_env  # never passed to the worker (the bearer token, the file-link secret)
        self.memory_label = memory_label  # the limit as the manifest says it ("256M"), for messages
        self.run_limit = run_limit
        self.state = WorkerState.STARTING
        self._idle_since = 0.0  # time.monotonic() of the answer that left the worker idle
        self._pipe: WorkerProtocol | None = None
        self._starting: asyncio.Future[FunctionSpec] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._pending: collections.deque[_Call] = collections.deque()
        self._abandoned = 0  # calls in _pending whose clients were answered 504 already
        self._closed: asyncio.Event | None = None
        self._replacing_overdue = False  # a call ran past --timeout: not ready until a new worker is up
        self._unavailable: str | None = None  # why no worker can serve (a restart failed), while retrying
        self._retry_at = 0.0  # loop.time() of the next restart attempt
        # One timer for every pending call's deadline, armed for the earliest: a per-call
        # wait_for(shield(...)) cost a timer, two more futures and two more loop turns per request.
        self._watchdog = EarliestTimer(self._expire)
        # One timer for the running call's --timeout too, re-armed only when it fires early.
        self._overrun = EarliestTimer(self._check_overrun)
        self._oom_kills: int | None = None

    def _move(self, to: WorkerState) -> None:
        if to not in _MOVES[self.state]:
            raise RuntimeError(f"worker state cannot go from {self.state.value} to {to.value}")
        self.state = to

    @property
    def waiting(self) -> int:
        """Calls queued behind the one running; abandoned ones (answered 504, skipped by the worker) not counted."""
        head = self._pending[0] if self._pending else None
        return max(0, len(self._pending) - self._abandoned - (1 if head is not None and not head.abandoned else 0))

    def _pop(self) -> _Call:
        call = self._pending.popleft()
        if call.abandoned:
            self._abandoned -= 1
        return call

    @property
    def stuck(self) -> bool:
        """A call ran past --timeout and its worker is being stopped and replaced."""
        return self._replacing_overdue

    @property
    def unavailable(self) -> str | None:
        """Why no worker can serve now (a restart failed and is being retried), or None."""
        return self._unavailable

    @property
    def pid(self) -> int | None:
        transport = self._pipe.transport if self._pipe else None
        pid: int | None = transport.get_pid() if transport else None
        return pid

    async def start(self) -> FunctionSpec:
        """The first start; its failure is the caller's (``serve`` refuses to start)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._spawn())
        return await asyncio.shield(self._starting)

    async def _spawn(self) -> FunctionSpec:
        """Start one worker process and wait for it to load the function; EntryPointError if it cannot."""
        if self.state is not WorkerState.STARTING:
            self._move(WorkerState.STARTING)
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
            await pipe.reap()
            if pipe.memory_peak is not None:
                how = f"went over the memory limit ({self._limit_text()}; it reached {pipe.memory_peak / memory.MB:.0f} MiB)"
            else:
                how = self._describe_death(pipe)[0]
            raise self._start_failed(f"the worker process {how} while loading {self.config.function}") from None
        if self.state is WorkerState.CLOSED or not isinstance(hello, Ready):
            await pipe.reap()
            raise self._start_failed(hello.message if isinstance(hello, (Fatal, BadReturn)) else
                                     f"the worker answered {type(hello).__name__} instead of loading the function")
        self._pipe = pipe
        self._replacing_overdue = False
        self._unavailable = None
        # calls that had not started when the last worker died, less those already answered 504
        self._pending = collections.deque(call for call in self._pending if not call.abandoned)
        self._abandoned = 0
        self._move(WorkerState.RUNNING if self._pending else WorkerState.IDLE)
        for call in self._pending:
            pipe.write(call.frame)
        if self._pending:
            self._started(self._pending[0])
        self.observer.worker_started(time.perf_counter() - started)
        log.info("worker for %s started (pid %s)", self.name, self.pid)
        spec: FunctionSpec = hello.spec
        return spec

    def _closing(self) -> bool:
        return self.state is WorkerState.CLOSED

    def _start_failed(self, message: str) -> EntryPointError:
        if self.state is not WorkerState.CLOSED:
            self._move(WorkerState.UNAVAILABLE)
        return EntryPointError(message)

    async def _restart(self) -> None:
        """Start a new worker; while that fails, retry with backoff and say why (``unavailable``)."""
        delay = RESTART_DELAY
        loop = asyncio.get_running_loop()
        while self.state is not WorkerState.CLOSED:
            try:
                self._starting = asyncio.ensure_future(self._spawn())
                await self._starting
                return
            except EntryPointError as error:
                if self._closing():
                    return
                self._retry_at = loop.time() + delay
                # the client-facing reason names no paths; the log has the whole story
                self._unavailable = ("its worker process could not be restarted (the service's log says why); "
                                     "retrying with backoff")
                log.error("restarting the worker for %s failed (%s); trying again in %g s", self.name, error, delay)
                self._fail_pending(self._refusal())
                await asyncio.sleep(delay)  # backoff before the next attempt (not a race: a timer)
                delay = min(delay * 2, RESTART_DELAY_MAX)

    def _refusal(self) -> NotReady:
        wait = max(1, math.ceil(self._retry_at - asyncio.get_running_loop().time()))
        return NotReady(f"model {self.name!r} is not ready: {self._unavailable}", retry_after=wait)

    # ----------------------------------------------------------------------- calls and replies

    def _started(self, call: _Call) -> None:
        """``call`` reached the head of the queue: the worker runs it now. Arm the --timeout kill."""
        loop = asyncio.get_running_loop()
        call.started_at = loop.time()
        if self.run_limit is not None:
            self._overrun.arm(loop, call.started_at + self.run_limit)

    def _check_overrun(self) -> None:
        """The --timeout timer fired: stop the running call if it has run that long, else wait for it."""
        head = self._pending[0] if self._pending else None
        if head is None or head.started_at is None or self.run_limit is None:
            return  # nothing runs: the next call to start arms it again
        due = head.started_at + self.run_limit
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self._overran(head)
        else:
            self._overrun.arm(loop, due)

    def _on_reply(self, reply: Any) -> None:
        pipe = self._pipe
        if isinstance(reply, OverMemory) and pipe is not None:
            pipe.retiring = True  # it exits now; the calls behind this one have not started
            pipe.memory_peak = reply.peak
            if reply.between_calls:  # grown while no call ran: the head never started, it goes to the next worker
                log.warning("the worker for %s grew to %.0f MiB between calls (threads an earlier call left "
                            "running?), over the memory limit (%s); replacing it", self.name, reply.peak / memory.MB,
                            self._limit_text())
                return
        if not self._pending:
            log.error("the worker for %s sent a %s with no call waiting; ignored", self.name, type(reply).__name__)
            return
        call = self._pop()
        if not call.abandoned and not call.future.done():
            call.future.set_result(reply)
        if pipe is not None and not pipe.retiring:
            if self._pending:
                self._started(self._pending[0])
            elif self.state is WorkerState.RUNNING:
                self._move(WorkerState.IDLE)
                self._idle_since = time.monotonic()

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any:
        """Run one call; ``deadline`` is a ``loop.time()`` after which the caller stops waiting (504)."""
        loop = asyncio.get_running_loop()
        if self._unavailable is not None:
            raise self._refusal()
        wall_deadline = None
        if deadline is not None:
            seconds_left = deadline - loop.time()
            if seconds_left <= 0:
                raise Timeout("the request's deadline had passed before inference could start; it did not run")
            wall_deadline = time.time() + seconds_left
        call = _Call(frame(Call(parameters, inputs, output_fields, wall_deadline)), loop.create_future())
        self._pending.append(call)
        pipe = self._pipe
        if pipe is None or pipe.retiring or pipe.killed or self.state not in (WorkerState.IDLE, WorkerState.RUNNING):
            pass  # the worker is (re)starting or retiring, and _spawn sends every pending call to the next one
        elif self.state is WorkerState.IDLE and self._grown_while_idle(pipe):
            pass  # it is being replaced: the new worker gets this call, which is not charged for what it found
        else:
            pipe.write(call.frame)
            if self.state is WorkerState.IDLE:
                self._move(WorkerState.RUNNING)
                self._started(call)
        if deadline is not None:  # the watchdog ends the wait: the call is abandoned, its future gets TimeoutError
            call.deadline = deadline
            self._watchdog.arm(loop, deadline)  # armed for the earliest pending deadline
        try:
            reply = await call.future
        except asyncio.CancelledError:
            self._abandon(call)  # the caller went away (a gRPC client's deadline, a closed connection)
            raise
        except TimeoutError:
            self._abandon(call)
            if call.started_at is not None:
                raise Timeout("inference did not finish within the request's deadline; its result will be "
                              "discarded") from None
            raise Timeout("the request's deadline passed while it waited for the calls ahead of it; it did not "
                          "run and will not") from None
        return self._result(reply)

    def _expire(self) -> None:
        """Time out every pending call's caller past its deadline; arm again for the earliest one left."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest: float | None = None
        for call in self._pending:
            if call.deadline is None or call.abandoned or call.future.done():
                continue
            if call.deadline <= now:
                self._abandon(call)
                call.future.set_exception(TimeoutError())
            elif earliest is None or call.deadline < earliest:
                earliest = call.deadline
        if earliest is not None:
            self._watchdog.arm(loop, earliest)

    def _abandon(self, call: _Call) -> None:
        """Nobody waits for ``call`` any more: its reply, when it comes, is dropped; the worker is left alone.
        (Its future is cancelled when its caller was: that call is abandoned too; one with an outcome is not.)"""
        if call.abandoned or (call.future.done() and not call.future.cancelled()):
            return
        call.abandoned = True
        if call in self._pending:
            self._abandoned += 1
        call.frame = b""  # never sent again (a new worker gets only live calls): free the inputs now

    def _result(self, reply: Any) -> Any:
        match reply:
            case Done(outputs):
                return outputs
            case Raised(exception_type, message, traceback):
                root = self.config.python_path
                log.error("inference raised %s: %s\n%s", exception_type, message, user_traceback(traceback, root))
                raise FunctionFailed(f"inference raised {exception_type}: {message}", exception_type=exception_type,
                                     where=location(traceback, root))
            case Invalid(message):
                raise InvalidInput(message)
            case Expired():
                raise Timeout("the request's deadline passed before inference could start; it did not run")
            case OverMemory(peak, _, strays):
                raise self._memory_error(peak, strays)
            case BadReturn(message):
                raise BadFunctionOutput(message)
        raise BadFunctionOutput(f"the worker answered a {type(reply).__name__} to a call")

    # ----------------------------------------------------------------------- how a worker ends

    def _fail_pending(self, error: MLComponentError) -> None:
        """No worker will run the calls waiting: each gets ``error``."""
        while self._pending:
            call = self._pop()
            if not call.abandoned and not call.future.done():
                call.future.set_exception(error)

    def _memory_error(self, peak: int, stray_threads: int = 0) -> MemoryLimitExceeded:
        strays = (f"; {stray_threads} thread(s) that earlier calls left running were running too and may have "
                  "used it") if stray_threads else ""
        return MemoryLimitExceeded(
            f"inference went over the memory limit ({self._limit_text()}): its worker process reached "
            f"{peak / memory.MB:.0f} MiB{strays}; it was stopped and is being restarted, and the model reloaded")

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
            log.warning("worker for %s (pid %s) and its descendants use %.0f MiB, over the memory limit (%s); "
                        "stopping them", self.name, pid, rss / memory.MB, self._limit_text())
            pipe.memory_peak = rss
            if not self._pending:
                pipe.retiring = True  # idle: no call of ours is to blame (nor one that arrives before it is gone)
            pipe.kill()

        task = asyncio.ensure_future(memory.watch(pid, limit, lambda: bool(self._pending), over))
        task.add_done_callback(_log_failure)

    def _grown_while_idle(self, pipe: WorkerProtocol) -> bool:
        """Before an idle worker gets a call, one look at its tree (the watch looks only every
        ``IDLE_INTERVAL`` while idle): memory taken since its last call (threads or processes that call
        left) must not be charged to this one. Replaces it when over. Between pipelined calls the worker's own
        check does this (``OverMemory.between_calls``)."""
        limit = self.config.memory_limit
        if limit is None or time.monotonic() - self._idle_since < IDLE_LOOK_AFTER:
            return False  # just answered: the worker's own check after that call (and before the next) covers it
        pid = pipe.transport.get_pid() if pipe.transport is not None else None
        if pid is None or not memory.can_watch():
            return False
        rss = memory.tree_rss(pid)
        if rss is None or rss <= limit:
            return False
        log.warning("the idle worker for %s (pid %s) and its descendants grew to %.0f MiB, over the memory limit (%s),"
                    " after its last call; replacing it before the next call", self.name, pid, rss / memory.MB,
                    self._limit_text())
        pipe.memory_peak = rss
        pipe.retiring = True  # no call of ours runs in it
        pipe.kill()
        return True

    def _overran(self, call: _Call) -> None:
        """The running call has run for --timeout: stop its worker by force (the only path that does)."""
        pipe = self._pipe
        if pipe is None or not self._pending or self._pending[0] is not call:
            return
        self._replacing_overdue = True
        pipe.stopped_because = f"a call ran past the service's --timeout of {self.run_limit:g} s"
        if not call.abandoned and not call.future.done():
            call.future.set_exception(Timeout(
                f"inference ran past the service's --timeout of {self.run_limit:g} s; it was stopped, and its worker "
                "is being restarted and the model reloaded"))
        log.warning("a call to %s ran past --timeout (%g s); stopping its worker (pid %s) and starting a new one",
                    self.name, self.run_limit, self.pid)
        pipe.kill()

    def _on_lost(self, pipe: WorkerProtocol) -> None:
        if pipe is not self._pipe:
            return  # a worker that never became the current one (failed start)
        self._pipe = None
        if self.state is WorkerState.CLOSED:
            self._fail_pending(WorkerDied("the service is shutting down"))
            if self._closed is not None:
                self._closed.set()
            return
        self._move(WorkerState.DEAD)
        self._starting = None
        error = self._death_error(pipe)
        if self._pending and not pipe.retiring and self._pending[0].started_at is not None:
            running = self._pop()  # the call it was running (one that arrived after a kill was never sent)
            if not running.abandoned and not running.future.done():
                running.future.set_exception(error)
        self.observer.worker_restarted()
        log.warning("worker for %s ended (%s); starting a new one", self.name, error.message)
        self._restarting = asyncio.ensure_future(self._restart())
        self._restarting.add_done_callback(_log_failure)

    async def close(self, grace: float = 5.0) -> None:
        """Stop the worker and all it started; calls still queued fail (the service is shutting down)."""
        was = self.state
        self._move(WorkerState.CLOSED)
        self._overrun.cancel()
        if self._restarting is not None and not self._restarting.done():
            self._restarting.cancel()
        pipe = self._pipe
        if pipe is None or pipe.transport is None or pipe.transport.is_closing():
            self._fail_pending(WorkerDied("the service is shutting down"))
            return
        pid = pipe.transport.get_pid()
        if pid is not None and was is not WorkerState.DEAD:
            kill_descendants(pid)  # while the worker lives, orphans of its tree are still its own
        self._closed = asyncio.Event()
        stdin = pipe.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()  # the worker reads EOF and exits
        try:
            await asyncio.wait_for(self._closed.wait(), grace)
        except TimeoutError:
            pipe.kill()
            await self._closed.wait()
        pipe.transport.close()  # gone and its pipes closed: nothing left for the garbage collector to warn about


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker's supervision failed: %s", task.exception())
