"""Admission by expected wait: refuse a request only when it cannot be answered in time.

Each HTTP worker process has its own queue and its own function, so each judges for
itself. A new request's expected wait is the calls ahead of it (pipelined calls, or
merged calls with batching: a merged call serves many) times the recent service time
per call. It is refused (503, ``Retry-After`` from the queue and the clients already told to
come back: see ``ReturnBook``) when that wait plus its own call is over the service's budget
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


class ReturnBook:
    """The whole seconds at which refused clients were told to come back, so that no second gets more of
    them than the queue drains in a second.

    Refused clients that came together (a burst, a restart, a load generator) and obey ``Retry-After``
    come back together; each wave is refused together again and holds the event loop for every request
    behind it. Booking them in turn, ``per_second`` to a second, turns a wave into a trickle the queue can
    take in. Past ``LONGEST`` seconds the book starts again from the earliest second, so a crowd larger
    than a minute of draining is spread twice as thick rather than piled on the last second."""

    LONGEST = 60  # seconds: the farthest a refused client is sent

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._second = -math.inf  # the latest second booked (on the clock's whole seconds)...
        self._booked = 0  # ...and how many clients were sent to it

    def book(self, earliest: int, per_second: int) -> int:
        """The ``Retry-After`` for one more refused client: at least ``earliest`` seconds, and the first second
        from there with fewer than ``per_second`` clients sent to it."""
        now = math.floor(self.clock())
        second = max(now + earliest, self._second)
        if second == self._second and self._booked >= per_second:
            second += 1
        if second - now > max(self.LONGEST, earliest):
            second = now + earliest
        if second != self._second:
            self._second, self._booked = second, 0
        self._booked += 1
        return int(second - now)


class Admission:
    """The rule: queue a request when its expected wait fits its deadline and the service's budget."""

    def __init__(self, max_queue_wait: float | None, service: ServiceTime | None = None) -> None:
        self.max_queue_wait = max_queue_wait
        self.service = service or ServiceTime()
        self.returns = ReturnBook(self.service.clock)

    def expected_wait(self, calls_ahead: int) -> float:
        return calls_ahead * (self.service.seconds or 0.0)

    def over_budget(self, calls_ahead: int, requests_per_call: int = 1) -> Refusal | None:
        """A refusal when the calls ahead and its own call would take longer than ``--max-queue-wait``, else
        None: an admitted request expects its answer within the budget. With nothing ahead it runs.

        Its ``Retry-After`` is at least the whole seconds until the queue has drained by the excess, and
        booked in ``returns`` at the queue's pace: the requests it answers in a second (``requests_per_call``
        for each call: a merged call serves many)."""
        if self.max_queue_wait is None or calls_ahead <= 0:
            return None
        per_call = self.service.seconds or 0.0
        wait = self.expected_wait(calls_ahead) + per_call
        if wait <= self.max_queue_wait:
            return None
        per_second = max(1, math.floor(requests_per_call / per_call)) if per_call > 0 else 1_000_000
        retry_after = self.returns.book(_retry_after(wait - self.max_queue_wait), per_second)
        return Refusal("queue_wait", f"busy: the expected wait and call is {wait:.3g} s ({self._ahead(calls_ahead)} + "
                                     f"its own), over the "
                                     f"service's queue-wait budget of {self.max_queue_wait:g} s (--max-queue-wait); "
                                     "retry later", retry_after)

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
