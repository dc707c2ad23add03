"""Admission by expected wait: refuse a request only when it cannot be answered in time.

Each HTTP worker process has its own queue and its own function, so each judges for
itself. A new request's expected wait is the calls ahead of it (pipelined calls, or
merged calls with batching: a merged call serves many) times the recent service time
per call. It is refused (503, ``Retry-After`` from the queue, spread over successive
refusals) when that wait plus its own call is over the service's budget
(``--max-queue-wait``) or its own deadline; a request with nothing ahead always runs;
``--max-queue`` is a hard cap on memory and binds only for calls faster than ``max-queue-wait / max-queue``.

The service time is the mean gap between answers over a recent window: in order, one call
at a time, a call's service starts when it was sent or when the call before it was
answered, whichever is later. Nothing is sampled, nothing runs on a timer.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from mlcomponent.errors import Timeout

T = TypeVar("T")

WINDOW_CALLS = 8  # the estimate is the mean over at least this many answers...
WINDOW_SECONDS = 0.5  # ...and at least this much time: it follows a change within a second or 8 calls


@dataclass(frozen=True)
class Refusal:
    """Why a request is not queued: ``reason`` labels the metric; ``message`` goes to the client after
    "model 'name' is " ("busy: ...", "not ready (...)")."""

    reason: str
    message: str
    retry_after: int


class ServiceTime:
    """Seconds per call of the function as the queue sees them: the mean gap between answers over a
    recent window (at least ``calls`` answers and ``seconds`` of time), so answers that arrive in
    bursts (a pipelined worker writes a burst of fast answers at once) average out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, calls: int = WINDOW_CALLS,
                 seconds: float = WINDOW_SECONDS) -> None:
        self.clock = clock
        self.calls = calls
        self.window = seconds
        self._samples: collections.deque[tuple[float, float]] = collections.deque()  # (answered at, service)
        self._sum = 0.0
        self._last_answer = -math.inf
        self.seconds: float | None = None  # the estimate; None until the first call is answered

    def sent(self) -> float:
        """Call it as a call goes to the function; pass what it returns to ``answered``."""
        return self.clock()

    def answered(self, sent: float) -> float:
        """One call answered: update the estimate; returns the seconds the call waited before it ran."""
        now = self.clock()
        began = max(sent, self._last_answer)
        self._last_answer = now
        sample = now - began
        self._samples.append((now, sample))
        self._sum += sample
        while len(self._samples) > self.calls and now - self._samples[1][0] >= self.window:
            self._sum -= self._samples.popleft()[1]
        self.seconds = max(0.0, self._sum / len(self._samples))  # read several times a request: kept, not derived
        return max(0.0, began - sent)

    async def measure(self, call: Awaitable[T], waited: Callable[[float], None]) -> T:
        """Await one call of the function, timed; ``waited`` gets the seconds it queued. A call abandoned at
        its deadline gives no sample (its worker may still be running it)."""
        sent = self.sent()
        try:
            result = await call
        except Timeout:
            raise
        except Exception:
            waited(self.answered(sent))
            raise
        waited(self.answered(sent))
        return result


class Admission:
    """The rule: queue a request when its expected wait fits its deadline and the service's budget."""

    def __init__(self, max_queue_wait: float | None, service: ServiceTime | None = None) -> None:
        self.max_queue_wait = max_queue_wait
        self.service = service or ServiceTime()
        self._budget_refusals = 0  # spreads their Retry-After: see ``over_budget``

    def expected_wait(self, calls_ahead: int) -> float:
        return calls_ahead * (self.service.seconds or 0.0)

    def over_budget(self, calls_ahead: int) -> Refusal | None:
        """A refusal when the calls ahead and its own call would take longer than ``--max-queue-wait``, else
        None: an admitted request expects its answer within the budget. With nothing ahead it runs.

        Its ``Retry-After`` is the whole seconds until the queue has drained by the excess, plus 0, 1, 2, ...
        seconds in turn over successive refusals, up to the budget's whole seconds: refused clients that
        came together come back spread over the budget (the queue takes in a budget's worth of calls per
        budget) instead of all at the same second, to be refused together again. (Booking them at the
        queue's pace instead, further out, was tried: refusals were faster but a quarter fewer requests
        were served; docs/benchmarks.md.)"""
        if self.max_queue_wait is None or calls_ahead <= 0:
            return None
        wait = self.expected_wait(calls_ahead) + (self.service.seconds or 0.0)
        if wait <= self.max_queue_wait:
            return None
        spread = self._budget_refusals % max(1, math.ceil(self.max_queue_wait))
        self._budget_refusals += 1
        return Refusal("queue_wait", f"busy: the expected wait and call is {wait:.3g} s ({self._ahead(calls_ahead)} + "
                                     f"its own), over the "
                                     f"service's queue-wait budget of {self.max_queue_wait:g} s (--max-queue-wait); "
                                     "retry later", _retry_after(wait - self.max_queue_wait) + spread)

    def past_deadline(self, calls_ahead: int, seconds_left: float | None) -> Refusal | None:
        """A refusal when the calls ahead would keep the request past its own deadline, else None.

        With nothing ahead it runs, and a deadline already over is a timeout (504), not a refusal."""
        if seconds_left is None or seconds_left <= 0 or calls_ahead <= 0 or self.service.seconds is None:
            return None
        wait = self.expected_wait(calls_ahead)
        need = wait + (self.service.seconds or 0.0)
        if need <= seconds_left:
            return None
        return Refusal("deadline", f"busy: the request's deadline ({seconds_left:.3g} s left) is shorter than "
                                   f"its expected wait and call ({need:.3g} s: {self._ahead(calls_ahead)}); it was "
                                   "not queued; retry later or allow a longer timeout", _retry_after(need - seconds_left))

    def _ahead(self, calls_ahead: int) -> str:
        return f"{calls_ahead} call(s) ahead × {self.service.seconds or 0.0:.3g} s per call"


def _retry_after(excess: float) -> int:
    """Whole seconds until the queue has drained by ``excess`` (at least 1: HTTP's Retry-After is whole)."""
    return max(1, math.ceil(excess))
