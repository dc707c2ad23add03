"""The runner interface, and the in-process runner (``--no-isolate``): the function on one thread.

Calls run on one dedicated thread: the event loop stays free for health probes and
other requests' I/O, and the function never runs concurrently with itself, so it
need not be thread-safe. Without a separate process there is no crash isolation and
a timed-out call cannot be stopped: it is answered with 504 and left to finish.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
        """A call is still running past its deadline (the service is not ready meanwhile)."""
        ...

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
        self._pending = 0  # calls submitted and not finished (the running one included)
        self._overdue = 0  # calls answered 504 that still run: a thread cannot be stopped
        self._overdue_calls: set[Future[Any]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def waiting(self) -> int:
        """Calls queued behind the one running."""
        return max(0, self._pending - 1)

    @property
    def stuck(self) -> bool:
        return self._overdue > 0

    async def start(self) -> FunctionSpec:
        return self.spec

    def call_sync(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                  output_fields: list[dict[str, Any]]) -> Any:
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
        if not isinstance(result, tuple) or len(result) != 2:
            raise BadFunctionOutput(f"inference returned {type(result).__name__}; it must return a tuple "
                                    "(outputs, model)")
        outputs, self.model = result
        return pack_outputs(outputs, output_fields, {t.name: t.allow_nan for t in self.spec.outputs})

    async def call(self, parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
                   output_fields: list[dict[str, Any]], deadline: float | None = None) -> Any:
        if self._overdue:
            raise NotReady("a call that ran past its deadline is still running, and without isolation it cannot "
                           "be stopped; retry shortly", retry_after=1)
        loop = asyncio.get_running_loop()
        # The thread's result goes straight to ``waiter`` (one hop back to the loop); a deadline is one
        # timer on it. wait_for(shield(wrap_future(...))) cost three futures and three loop turns.
        waiter = loop.create_future()
        submitted = self._executor.submit(self.call_sync, parameters, inputs, output_fields)
        self._pending += 1
        submitted.add_done_callback(lambda done: _to_loop(loop, self._settle, done, waiter))
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        except TimeoutError:
            if submitted.cancel():  # still queued: it never runs
                raise Timeout("the request's deadline passed while it waited for the calls ahead of it; it did "
                              "not run and will not") from None
            self._overdue += 1  # running: it cannot be stopped; not ready until it returns
            self._overdue_calls.add(submitted)
            raise Timeout("inference did not finish within the request's deadline (it runs in-process and "
                          "cannot be stopped; serve with isolation for hard timeouts)") from None
        except asyncio.CancelledError:
            if deadline is None:
                submitted.cancel()  # as awaiting the wrapped future did: a queued call is dropped
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _settle(self, done: Future[Any], waiter: asyncio.Future[Any]) -> None:
        """In the loop: the call finished (or was cancelled before it ran)."""
        self._pending -= 1
        if done in self._overdue_calls:
            self._overdue_calls.discard(done)
            self._overdue -= 1
        if waiter.done():
            return  # answered 504 already, or its caller is gone
        if done.cancelled():
            waiter.cancel()
        elif (error := done.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    async def close(self, grace: float = 5.0) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _to_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """From the executor's thread: run ``callback`` in the loop (unless the loop is gone)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody waits for the answer
        pass


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
