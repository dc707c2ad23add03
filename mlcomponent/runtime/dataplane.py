"""The data plane: one inference request from decoded body to checked response.

Transport-free (no HTTP or gRPC here), so the flow reads top to bottom:
decode + validate → stage files → call the function → check outputs → publish files.
Each transport parses its own encoding into the V2 body, calls ``admit`` before it
reads the body, then ``infer``, and encodes the ``InferenceResponse`` its own way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcomponent.boxes.base import Box
from mlcomponent.errors import BadRequest, NotFound, NotReady
from mlcomponent.options import DEFAULTS, ServeOptions
from mlcomponent.protocol.packed import pack_checked_lists
from mlcomponent.protocol.request import decode_request
from mlcomponent.protocol.response import check_outputs
from mlcomponent.protocol.types import InferenceRequest, InferenceResponse
from mlcomponent.runtime.batching import Batcher
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.files import FileKeys, RequestFiles
from mlcomponent.runtime.health import Health
from mlcomponent.runtime.runner import Runner
from mlcomponent.spec.model import UNDECLARED, FunctionSpec


@dataclass(frozen=True)
class Limits:
    """The serve options the data plane holds to (declared, with their defaults, in ``options.py``)."""

    timeout: float | None = None
    max_queue: int = DEFAULTS.max_queue
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
        self.health = Health.STARTING
        self.reason: str | None = None  # why warm-up failed, in one line: every 503 and readiness answer says it
        self.file_keys: FileKeys | None = None  # signs output keys (set by the service)
        self.batcher: Batcher | None = None  # set at start-up when the function declares Batching

    @property
    def ready(self) -> bool:
        """Warmed up, not stopping, and not stuck on a call past its deadline."""
        return self.health is Health.READY and not self.runner.stuck

    @property
    def not_ready_reason(self) -> str | None:
        """Why it is not ready, in one line, when there is more to say than its state (a failed warm-up)."""
        if self.ready:
            return None
        if self.health is Health.READY:
            return "a call that ran past its deadline is still running; retry shortly"
        return self.reason

    @property
    def queued(self) -> int:
        return self.runner.waiting + (self.batcher.waiting if self.batcher is not None else 0)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}; this service serves {self.model_name!r}")

    def request_files(self, *, keep_uploads: bool = True) -> RequestFiles:
        return RequestFiles(self.files_root, self.file_box, self.model_name, keep_uploads=keep_uploads,
                            keys=self.file_keys)

    def admit(self) -> None:
        """Refuse work early when the model is not ready or the queue is full (503 + Retry-After)."""
        if self.health is not Health.READY:  # a worker replaced after a deadline still takes calls: they wait
            because = f": {self.reason}" if self.reason else f" ({self.health.value})"
            raise NotReady(f"model {self.model_name!r} is not ready{because}", retry_after=1)
        if self.runner.waiting >= self.limits.max_queue:
            raise NotReady(f"model {self.model_name!r} is busy: {self.runner.waiting} requests are already "
                           f"waiting (--max-queue {self.limits.max_queue}); retry shortly", retry_after=1)
        batcher = self.batcher
        if batcher is not None and batcher.waiting >= self.limits.max_queue * batcher.max_batch_size:
            raise NotReady(f"model {self.model_name!r} is busy: {batcher.waiting} requests are already waiting to "
                           f"be batched (--max-queue {self.limits.max_queue} calls of up to "
                           f"{batcher.max_batch_size} rows); retry shortly", retry_after=1)

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

    def deadline(self, request: InferenceRequest, arrived: float | None) -> float | None:
        """The ``loop.time()`` by which the call must finish: the tighter of --timeout and the request's."""
        timeout = min((t for t in (self.limits.timeout, request.timeout) if t is not None), default=None)
        if timeout is None:
            return None
        elapsed = time.monotonic() - arrived if arrived is not None else 0.0
        return asyncio.get_running_loop().time() + timeout - elapsed

    async def infer(self, body: Any, files: RequestFiles, arrived: float | None = None) -> InferenceResponse:
        """Decode, call and check one request. ``arrived`` is the ``time.monotonic()`` it came in.

        The caller owns ``files`` and cleans it up, whatever happens.
        """
        batcher = self.batcher
        if batcher is not None:
            batcher.arrive()  # a batch forming now may wait for this request
        try:
            request = self.decode(body)
            if self.spec.numpy:
                pack_checked_lists(request.inputs)  # the worker makes arrays of the bytes, not of a list
            deadline = self.deadline(request, arrived)
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
                parameters, inputs, output_fields = request.function_arguments(staged_inputs, staged_outputs)
                returned = await self.runner.call(parameters, inputs, output_fields, deadline)
        finally:
            self.observer.inference_finished(time.perf_counter() - started)
        outputs = check_outputs(returned, request, self.spec)
        if any(o.datatype == "FILE" for o in outputs):
            await asyncio.to_thread(files.publish, outputs)
        if files.bytes_in or files.bytes_out:
            self.observer.files_moved(files.bytes_in, files.bytes_out)
        return InferenceResponse(self.model_name, request, outputs, dict(files.upload_keys))
