"""The data plane: one inference request from decoded body to response body.

Transport-free (no HTTP here), so the flow reads top to bottom:
decode + validate → stage files → call the function → check outputs → publish files → encode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcomponent.boxes.base import Box
from mlcomponent.errors import NotFound, NotReady
from mlcomponent.protocol.request import InferenceCall, decode_request
from mlcomponent.protocol.response import check_outputs, encode_response
from mlcomponent.runtime.files import RequestFiles
from mlcomponent.runtime.runner import FunctionRunner, Health
from mlcomponent.spec.model import FunctionSpec

log = logging.getLogger("mlcomponent.dataplane")


class DataPlane:
    def __init__(self, model_name: str, runner: FunctionRunner, spec: FunctionSpec, file_box: Box,
                 files_root: Path) -> None:
        self.model_name = model_name
        self.runner = runner
        self.spec = spec
        self.file_box = file_box
        self.files_root = files_root
        self.health = Health.STARTING
        self.observers: list[Callable[[str, float], None]] = []

    @property
    def ready(self) -> bool:
        return self.health is Health.READY

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise NotFound(f"unknown model {name!r}; this service serves {self.model_name!r}")

    def request_files(self, url_for: Callable[[str], str]) -> RequestFiles:
        return RequestFiles(self.files_root, self.file_box, self.model_name, url_for)

    async def infer(self, body: Any, files: RequestFiles, warmup: bool = False) -> dict[str, Any]:
        if not self.ready and not warmup:
            raise NotReady(f"model {self.model_name!r} is not ready ({self.health.value})", retry_after=1)
        call = decode_request(body, self.spec)
        needs_files = bool(call.file_inputs) or any(f["datatype"] == "FILE" for f in call.output_fields)
        if needs_files:
            await asyncio.to_thread(self._stage, call, files)
        started = time.perf_counter()
        returned = await self.runner.call(call.parameters, call.inputs, call.output_fields)
        for observe in self.observers:
            observe("inference", time.perf_counter() - started)
        outputs = check_outputs(returned, call, self.spec)
        if any(o["datatype"] == "FILE" for o in outputs):
            await asyncio.to_thread(files.publish, outputs)
        body = encode_response(self.model_name, call, outputs)
        if files.upload_keys:
            body["parameters"] = {"uploaded_files": files.upload_keys}
        return body

    @staticmethod
    def _stage(call: InferenceCall, files: RequestFiles) -> None:
        files.prepare_inputs(call.inputs)
        files.prepare_outputs(call.output_fields)

    def decode(self, body: Any) -> InferenceCall:
        return decode_request(body, self.spec)
