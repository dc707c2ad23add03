"""The runner interface, and the in-process runner (``--no-isolate``): the function on one thread.

Calls run on one dedicated thread: the event loop stays free for health probes and
other requests' I/O, and the function never runs concurrently with itself, so it
need not be thread-safe. Without a separate process there is no crash isolation and
a timed-out call cannot be stopped: it is answered with 504 and left to finish.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from mlcomponent.errors import BadFunctionOutput, FunctionFailed, Timeout
from mlcomponent.protocol.packed import function_data, pack_outputs
from mlcomponent.runtime.entrypoint import InferenceFunction
from mlcomponent.runtime.worker import exception_name
from mlcomponent.spec.model import FunctionSpec

log = logging.getLogger("mlcomponent.runtime")


class Runner(Protocol):
    """What the data plane needs from whatever runs the function."""

    @property
    def waiting(self) -> int: ...

    async def start(self) -> FunctionSpec: ...

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any: ...

    async def close(self, grace: float = 5.0) -> None: ...


class InProcessRunner:
    def __init__(self, function: InferenceFunction, spec: FunctionSpec, model_key: str) -> None:
        self.function = function
        self.spec = spec
        self.model_key = model_key
        self.model: Any = None
        self.waiting = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def start(self) -> FunctionSpec:
        return self.spec

    def call_sync(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                  output_fields: list[dict[str, Any]]) -> Any:
        try:
            result = self.function(parameters, function_data(inputs, self.spec.numpy), output_fields,
                                   self.model_key, self.model)
        except Exception as error:
            log.exception("inference raised")
            raise FunctionFailed(f"inference raised {exception_name(error)}: {error}") from error
        if not isinstance(result, tuple) or len(result) != 2:
            raise BadFunctionOutput(f"inference returned {type(result).__name__}; it must return a tuple "
                                    "(outputs, model)")
        outputs, self.model = result
        return pack_outputs(outputs, output_fields, {t.name: t.allow_nan for t in self.spec.outputs})

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.call_sync, parameters, inputs, output_fields)
        if deadline is None:
            return await future
        self.waiting += 1
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise Timeout("inference did not finish within the request's deadline (it runs in-process and "
                          "cannot be stopped; serve with isolation for hard timeouts)") from None
        finally:
            self.waiting -= 1

    async def close(self, grace: float = 5.0) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
