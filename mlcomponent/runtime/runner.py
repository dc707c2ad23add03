"""Hold the model object and call the user's function, one call at a time per worker.

Calls run on one dedicated thread: the event loop stays free for health probes and
other requests' I/O, and the function never runs concurrently with itself, so it
need not be thread-safe.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlcomponent.errors import BadFunctionOutput, FunctionFailed
from mlcomponent.runtime.entrypoint import InferenceFunction

log = logging.getLogger("mlcomponent.runtime")


class Health(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    WARMUP_FAILED = "warmup_failed"
    STOPPING = "stopping"


class FunctionRunner:
    def __init__(self, function: InferenceFunction, model_key: str, name: str) -> None:
        self.function = function
        self.model_key = model_key
        self.name = name
        self.model: Any = None
        self.calls = 0
        self.last_call_seconds = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    def call_sync(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                  output_fields: list[dict[str, Any]]) -> Any:
        started = time.perf_counter()
        try:
            result = self.function(parameters, inputs, output_fields, self.model_key, self.model)
        except Exception as error:
            log.exception("inference raised")
            raise FunctionFailed(f"inference raised {type(error).__module__}.{type(error).__qualname__}: {error}"
                                 .replace("builtins.", "")) from error
        finally:
            self.calls += 1
            self.last_call_seconds = time.perf_counter() - started
        if not isinstance(result, tuple) or len(result) != 2:
            raise BadFunctionOutput(f"inference returned {type(result).__name__}; it must return a tuple "
                                    "(outputs, model)")
        outputs, self.model = result
        return outputs

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call_sync, parameters, inputs, output_fields)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
