"""The data plane: one inference request from decoded body to response body.

Transport-free (no HTTP here), so the flow reads top to bottom:
decode + validate → stage files → call the function → check outputs → publish files → encode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcomponent.boxes.base import Box
from mlcomponent.errors import BadRequest, NotFound, NotReady
from mlcomponent.protocol.request import InferenceCall, decode_request
from mlcomponent.protocol.response import check_outputs, encode_response
from mlcomponent.runtime.files import RequestFiles
from mlcomponent.runtime.runner import Health, Runner
from mlcomponent.spec.model import UNDECLARED, FunctionSpec

log = logging.getLogger("mlcomponent.dataplane")


@dataclass(frozen=True)
class Limits:
    timeout: float | None = None
    max_queue: int = 64
    max_inputs: int = 64
    max_elements: int = 16 * 1024 * 1024


class DataPlane:
    def __init__(self, model_name: str, runner: Runner, file_box: Box, files_root: Path,
                 limits: Limits | None = None) -> None:
        self.model_name = model_name
        self.runner = runner
        self.spec: FunctionSpec = UNDECLARED
        self.file_box = file_box
        self.files_root = files_root
        self.limits = limits or Limits()
        self.health = Health.STARTING
        self.in_flight = 0
        self.observe: Callable[[str, float], None] = lambda name, value: None

    @property
    def ready(self) -> bool:
        return self.health is Health.READY

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}; this service serves {self.model_name!r}")

    def request_files(self, url_for: Callable[[str], str]) -> RequestFiles:
        return RequestFiles(self.files_root, self.file_box, self.model_name, url_for)

    def admit(self) -> None:
        """Refuse work early when the model is not ready or the queue is full (503 + Retry-After)."""
        if not self.ready:
            raise NotReady(f"model {self.model_name!r} is not ready ({self.health.value})", retry_after=1)
        if self.runner.waiting >= self.limits.max_queue:
            raise NotReady(f"model {self.model_name!r} is busy: {self.runner.waiting} requests are already "
                           f"waiting (--max-queue {self.limits.max_queue}); retry shortly", retry_after=1)

    def decode(self, body: Any) -> InferenceCall:
        call = decode_request(body, self.spec)
        if len(call.inputs) > self.limits.max_inputs:
            raise BadRequest(f"{len(call.inputs)} inputs is over the limit of {self.limits.max_inputs} (--max-inputs)")
        for item in call.inputs:
            if item["datatype"] != "FILE" and len(item["data"]) > self.limits.max_elements:
                raise BadRequest(f"input {item['name']!r} has {len(item['data'])} elements, over the limit of "
                                 f"{self.limits.max_elements} per input (--max-elements)")
        return call

    async def infer(self, body: Any, files: RequestFiles,
                    arrived: float | None = None) -> tuple[dict[str, Any], InferenceCall]:
        """The response body, and the decoded call (which says how the client wants it encoded).

        Transports call ``admit`` first, before reading the body; the warm-up does not.
        """
        call = self.decode(body)
        loop = asyncio.get_running_loop()
        timeout = min((t for t in (self.limits.timeout, call.timeout) if t is not None), default=None)
        elapsed = time.monotonic() - arrived if arrived is not None else 0.0
        deadline = None if timeout is None else loop.time() + timeout - elapsed
        if call.file_inputs or any(f["datatype"] == "FILE" for f in call.output_fields):
            await asyncio.to_thread(self._stage, call, files)
        started = time.perf_counter()
        try:
            returned = await self.runner.call(call.parameters, call.inputs, call.output_fields, deadline)
        finally:
            self.observe("inference_seconds", time.perf_counter() - started)
        outputs = check_outputs(returned, call, self.spec)
        if any(o["datatype"] == "FILE" for o in outputs):
            await asyncio.to_thread(files.publish, outputs)
        body = encode_response(self.model_name, call, outputs)
        if files.upload_keys:
            body["parameters"] = {"uploaded_files": files.upload_keys}
        if files.bytes_in:
            self.observe("file_bytes_in", files.bytes_in)
        if files.bytes_out:
            self.observe("file_bytes_out", files.bytes_out)
        return body, call

    @staticmethod
    def _stage(call: InferenceCall, files: RequestFiles) -> None:
        files.prepare_inputs(call.inputs)
        files.prepare_outputs(call.output_fields)
