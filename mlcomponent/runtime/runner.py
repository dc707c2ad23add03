"""The runner interface, and the in-process runner (``--no-isolate``): the function on one thread.

Calls run on one dedicated thread: the event loop stays free for health probes and
other requests' I/O, and the function never runs concurrently with itself, so it
need not be thread-safe. Without a separate process there is no crash isolation and
a timed-out call cannot be stopped: it is answered with 504 and left to finish (calls
queue behind it). Only a call that runs past the service's ``--timeout`` makes the
service not ready (and refuse calls) until it returns; a client's deadline never does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from mlcomponent.errors import BadFunctionOutput, FunctionFailed, InvalidInput, NotReady, Timeout
from mlcomponent.protocol.packed import function_data, pack_outputs
from mlcomponent.runtime.cause import location, user_traceback
from mlcomponent.runtime.entrypoint import InferenceFunction
from mlcomponent.runtime.worker import exception_name
from mlcomponent.spec.model import FunctionSpec

log = logging.getLogger("mlcomponent.runtime")


class Runner(Protocol):
    """What the data plane needs from whatever runs the function."""

    @property
    def waiting(self) -> int: ...

    @property
    def stuck(self) -> bool:
        """A call is still running past the service's --timeout (the service is not ready meanwhile)."""
        ...

    @property
    def unavailable(self) -> str | None:
        """Why no call can run now (a worker that cannot be restarted), or None; calls get 503 meanwhile."""
        ...

    async def start(self) -> FunctionSpec: ...

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any: ...

    async def close(self, grace: float = 5.0) -> None: ...


class InProcessRunner:
    def __init__(self, function: InferenceFunction, spec: FunctionSpec, model_key: str, *,
                 run_limit: float | None = None) -> None:
        self.function = function
        self.spec = spec
        self.model_key = model_key
        self.run_limit = run_limit  # the service's --timeout: past it a running call makes the service unready
        self.model: Any = None
        self._running_since: float | None = None  # time.monotonic() the running call started
        self._pending = 0  # calls submitted and not finished (the running one included)
        self._overdue = 0  # calls answered 504 that still run: a thread cannot be stopped
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def waiting(self) -> int:
        """Calls queued behind the one running."""
        return max(0, self._pending - 1)

    @property
    def stuck(self) -> bool:
        return self._overdue > 0

    @property
    def unavailable(self) -> str | None:
        return None

    async def start(self) -> FunctionSpec:
        return self.spec

    def call_sync(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                  output_fields: list[dict[str, Any]]) -> Any:
        self._running_since = time.monotonic()
        try:
            result = self.function(parameters, function_data(inputs, self.spec.numpy), output_fields,
                                   self.model_key, self.model)
        except InvalidInput:
            raise
        except Exception as error:
            name = exception_name(error)
            text = traceback.format_exc()
            log.error("inference raised %s: %s\n%s", name, error, user_traceback(text))
            raise FunctionFailed(f"inference raised {name}: {error}", exception_type=name,
                                 where=location(text)) from error
        finally:
            self._running_since = None
        if not isinstance(result, tuple) or len(result) != 2:
            raise BadFunctionOutput(f"inference returned {type(result).__name__}; it must return a tuple "
                                    "(outputs, model)")
        outputs, self.model = result
        return pack_outputs(outputs, output_fields, {t.name: t.allow_nan for t in self.spec.outputs})

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any:
        if self._overdue:
            raise NotReady("a call that ran past the service's --timeout is still running, and without isolation it cannot "
                           "be stopped; retry shortly", retry_after=1)
        loop = asyncio.get_running_loop()
        submitted = self._executor.submit(self.call_sync, parameters, inputs, output_fields)
        future = asyncio.wrap_future(submitted, loop=loop)
        self._pending += 1
        future.add_done_callback(self._finished)
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            if submitted.cancel():  # still queued: it never runs
                raise Timeout("the request's deadline passed while it waited for the calls ahead of it; it did "
                              "not run and will not") from None
            self._watch_overrun(future)  # running: it cannot be stopped; it goes on, its result discarded
            raise Timeout("inference did not finish within the request's deadline (it runs in-process and "
                          "cannot be stopped; serve with isolation for hard timeouts)") from None

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self._pending -= 1
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned call's failure is not "never retrieved"

    def _watch_overrun(self, future: asyncio.Future[Any]) -> None:
        """Once the running call has run for --timeout, the service is not ready until it returns."""
        if self.run_limit is None:
            return
        started = self._running_since if self._running_since is not None else time.monotonic()

        def overran() -> None:
            if not future.done():
                log.warning("a call has run past --timeout (%g s) and cannot be stopped without isolation; not ready "
                            "until it returns", self.run_limit)
                self._overdue += 1
                future.add_done_callback(self._overdue_finished)

        asyncio.get_running_loop().call_later(max(0.0, started + self.run_limit - time.monotonic()), overran)

    def _overdue_finished(self, future: asyncio.Future[Any]) -> None:
        self._overdue -= 1

    async def close(self, grace: float = 5.0) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
