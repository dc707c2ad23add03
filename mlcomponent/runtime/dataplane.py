"""The data plane: one inference request from decoded body to checked response.

Transport-free (no HTTP or gRPC here), so the flow reads top to bottom:
admit → decode + validate → stage files → call the function → check outputs → publish files.
Each transport opens ``request_scope`` before it reads the body (admission, 503 at once;
the request's files: a failed request keeps nothing in the box, the folder goes before
the answer), parses its own encoding into the V2 body, calls ``infer``, and encodes the
``InferenceResponse`` its own way.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcomponent.boxes.base import Box
from mlcomponent.errors import BadRequest, NotFound, Refused
from mlcomponent.options import DEFAULTS, ServeOptions
from mlcomponent.protocol.packed import pack_checked_lists, reusing_checked_arrays
from mlcomponent.protocol.request import decode_request
from mlcomponent.protocol.response import check_outputs
from mlcomponent.protocol.types import InferenceRequest, InferenceResponse
from mlcomponent.runtime.admission import Admission, Refusal
from mlcomponent.runtime.batching import Batcher
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.files import FileKeys, RequestFiles
from mlcomponent.runtime.health import Health, State
from mlcomponent.runtime.runner import Runner
from mlcomponent.spec.model import UNDECLARED, FunctionSpec


@dataclass(frozen=True)
class Limits:
    """The serve options the data plane holds to (declared, with their defaults, in ``options.py``)."""

    timeout: float | None = None
    max_queue: int = DEFAULTS.max_queue  # a hard cap on memory; the wait budget refuses first
    max_queue_wait: float | None = DEFAULTS.max_queue_wait  # seconds of expected queue wait before 503
    max_inputs: int = DEFAULTS.max_inputs
    max_elements: int = DEFAULTS.max_elements

    @classmethod
    def of(cls, options: ServeOptions) -> Limits:
        return cls(**{name: getattr(options, name) for name in cls.__dataclass_fields__})


class DataPlane:
    def __init__(self, model_name: str, runner: Runner, file_box: Box, files_root: Path,
                 limits: Limits | None = None, observer: Observer | None = None) -> None:
        self.model_name = model_name
        self.runner = runner
        self.spec: FunctionSpec = UNDECLARED
        self.file_box = file_box
        self.files_root = files_root
        self.limits = limits or Limits()
        self.observer = observer or Observer()
        self.health = Health()
        self.admission = Admission(self.limits.max_queue_wait)
        self.reason: str | None = None  # why warm-up failed, in one line: every 503 and readiness answer says it
        self.file_keys: FileKeys | None = None  # signs output keys (set by the service)
        self.batcher: Batcher | None = None  # set at start-up when the function declares Batching
        self.admitted = 0  # requests let in by ``request_scope`` and not answered
        self.last_refused = -math.inf  # time.monotonic() of the latest refusal (``refused_recently``)
        self.calls = 0  # requests in ``infer`` and not answered, each one call (without batching)

    @property
    def ready(self) -> bool:
        """Warmed up, not stopping, and a worker can serve (none stuck past --timeout, none failing to restart)."""
        problem = self.worker_problem()
        self.health.follow_worker(problem is None, problem or "")
        return self.health.ready

    def worker_problem(self) -> str | None:
        """Why no worker can serve now, or None."""
        if self.runner.unavailable is not None:
            return self.runner.unavailable
        if self.runner.stuck:
            return "a call ran past the service's --timeout and is being stopped (or, without isolation, still runs)"
        return None

    @property
    def not_ready_reason(self) -> str | None:
        """Why it is not ready, in one line, when there is more to say than its state (a failed warm-up, a
        worker that cannot be restarted or is being replaced after --timeout)."""
        if self.ready:
            return None
        if self.health.state is State.UNAVAILABLE:
            return f"{self.worker_problem() or self.health.reason}; retry shortly"
        return self.reason

    @property
    def queued(self) -> int:
        return self.runner.waiting + (self.batcher.waiting if self.batcher is not None else 0)

    @property
    def calls_ahead(self) -> int:
        """Calls a new request would wait for: admitted and not answered (a burst of arrivals counts before
        its bodies are read), merged calls counted once."""
        if self.batcher is not None:
            return self.batcher.calls_ahead(self.admitted)
        return max(self.admitted, self.calls)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}; this service serves {self.model_name!r}")

    def request_files(self, *, keep_uploads: bool = True) -> RequestFiles:
        return RequestFiles(self.files_root, self.file_box, self.model_name, keep_uploads=keep_uploads,
                            keys=self.file_keys)

    def request_scope(self) -> RequestScope:
        """One request, for every transport, from admission to answer: ``admit`` (503 before anything is
        read), then counted as ahead of later requests until it is answered; its files: a request that
        fails keeps nothing in the file box (its kept uploads and published outputs are removed), and its
        folder is gone before the answer."""
        return RequestScope(self)

    def admit(self) -> None:
        """Refuse work early (503 + Retry-After): not ready, or the queue ahead would take too long."""
        refused = self.refuse_now()
        if refused is None:
            return
        try:
            raise refused
        finally:
            del refused  # else this frame, held by the traceback, holds the error: a cycle for the GC per refusal

    def refuse_now(self) -> Refused | None:
        """The 503 a new request gets now, or None: it may queue. A refusal counts: the metric, the spread
        of Retry-After, ``last_refused``."""
        state = self.health.state
        if state is not State.READY and state is not State.UNAVAILABLE:  # a worker being replaced: calls wait
            because = f": {self.reason}" if self.reason else f" ({self.health.describe()})"
            return self._refused(Refusal("not_ready", f"not ready{because}", 1))
        if self.runner.unavailable is not None:  # no worker can be started: say so now, not after the deadline
            return self._refused(Refusal("not_ready", f"not ready: {self.runner.unavailable}", 1))
        if self.queued >= self.limits.max_queue:
            return self._refused(Refusal("queue_full", f"busy: {self.queued} requests are already waiting "
                                         f"(--max-queue {self.limits.max_queue}); retry shortly", 1))
        refusal = self.admission.over_budget(self.calls_ahead)
        return None if refusal is None else self._refused(refusal)

    def refused_recently(self, within: float = 1.0) -> bool:
        """Whether a request was refused in the last ``within`` seconds: the service is shedding load."""
        return time.monotonic() - self.last_refused < within

    def _refused(self, refusal: Refusal) -> Refused:
        self.last_refused = time.monotonic()
        self.observer.refused(refusal.reason)
        return Refused(f"model {self.model_name!r} is {refusal.message}", retry_after=refusal.retry_after)

    def admit_by_deadline(self, seconds_left: float, calls_ahead: int) -> None:
        """Refuse (503) a request whose deadline would pass while it waits, rather than queue it to time out."""
        refusal = self.admission.past_deadline(calls_ahead, seconds_left)
        if refusal is not None:
            raise self._refused(refusal)

    def decode(self, body: Any) -> InferenceRequest:
        request = decode_request(body, self.spec)
        if len(request.inputs) > self.limits.max_inputs:
            raise BadRequest(f"{len(request.inputs)} inputs is over the limit of {self.limits.max_inputs} "
                             "(--max-inputs)")
        for item in request.inputs:
            if item.datatype != "FILE" and len(item.data) > self.limits.max_elements:
                raise BadRequest(f"input {item.name!r} has {len(item.data)} elements, over the limit of "
                                 f"{self.limits.max_elements} per input (--max-elements)")
        return request

    def seconds_left(self, request: InferenceRequest, arrived: float | None) -> float | None:
        """The seconds the call may still take: the tighter of --timeout and the request's own, less the time
        since it arrived (``arrived``: its ``time.monotonic()``); None: no limit."""
        timeout = self.limits.timeout
        own = request.timeout
        if own is not None and (timeout is None or own < timeout):
            timeout = own
        if timeout is None:
            return None
        return timeout if arrived is None else timeout - (time.monotonic() - arrived)

    async def infer(self, body: Any, files: RequestFiles, arrived: float | None = None) -> InferenceResponse:
        """Decode, call and check one request. ``arrived`` is the ``time.monotonic()`` it came in.

        The caller owns ``files`` and cleans it up, whatever happens.
        """
        batcher = self.batcher
        if batcher is not None:
            batcher.arrive()  # a batch forming now may wait for this request
            return await self._infer(body, files, arrived, batcher)
        self.calls += 1  # ahead of the next request from now on: a burst of arrivals sees each other
        try:
            return await self._infer(body, files, arrived, None)
        finally:
            self.calls -= 1

    async def _infer(self, body: Any, files: RequestFiles, arrived: float | None,
                     batcher: Batcher | None) -> InferenceResponse:
        try:
            if self.spec.numpy:
                with reusing_checked_arrays():  # the checks' typed arrays become the packed data
                    request = self.decode(body)
                    pack_checked_lists(request.inputs)  # the worker makes arrays of the bytes, not of a list
            else:
                request = self.decode(body)
            deadline = None  # the loop.time() by which the call must finish
            seconds_left = self.seconds_left(request, arrived)
            if seconds_left is not None:
                self.admit_by_deadline(seconds_left, self.calls_ahead - (batcher is None))  # not counting itself
                deadline = asyncio.get_running_loop().time() + seconds_left
            staged_inputs = staged_outputs = None
            if request.has_files:
                staged_inputs, staged_outputs = await asyncio.to_thread(
                    lambda: (files.stage_inputs(request), files.stage_outputs(request)))
        except BaseException:
            if batcher is not None:
                batcher.leave()
            raise
        started = time.perf_counter()
        try:
            if batcher is not None:
                returned = await batcher.call(request, staged_inputs, staged_outputs, deadline)
            else:
                returned = await self._call(request.function_arguments(staged_inputs, staged_outputs), deadline)
        finally:
            self.observer.inference_finished(time.perf_counter() - started)
        outputs = check_outputs(returned, request, self.spec)
        if any(o.datatype == "FILE" for o in outputs):
            await asyncio.to_thread(files.publish, outputs)
        if files.bytes_in or files.bytes_out:
            self.observer.files_moved(files.bytes_in, files.bytes_out)
        return InferenceResponse(self.model_name, request, outputs, dict(files.upload_keys))

    async def _call(self, arguments: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]],
                    deadline: float | None) -> Any:
        """One call of the runner, timed for the admission estimate (a call abandoned at its deadline is not)."""
        return await self.admission.service.measure(self.runner.call(*arguments, deadline),
                                                    self.observer.queue_waited)


class RequestScope:
    """``DataPlane.request_scope``: a class, not an ``asynccontextmanager`` (every request passes here, and
    the generator costs about two microseconds more)."""

    __slots__ = ("plane", "files")

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def __aenter__(self) -> RequestFiles:
        plane = self.plane
        plane.admit()
        plane.admitted += 1
        self.files = files = plane.request_files()
        return files

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        files = self.files
        try:
            if kind is not None and files.in_box:
                await asyncio.to_thread(files.discard)
        finally:
            self.plane.admitted -= 1
            if files.created:  # most requests make no folder: no thread hop (~100 µs) to remove nothing
                await asyncio.to_thread(files.cleanup)
