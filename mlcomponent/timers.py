"""One event-loop timer for deadlines that move on with every request or call.

Arming and cancelling a timer per request costs a few microseconds and leaves the cancelled
ones in the loop's heap. An ``EarliestTimer`` stays armed when it already fires by the time
asked; its callback looks at what is due then and arms it again for what is still pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def do_nothing() -> None:
    """A callback that holds nothing (what a closed timer, or a dropped hook, is left with)."""


class EarliestTimer:
    """Fires ``callback`` no later than the earliest time ``arm`` was given since it last fired."""

    __slots__ = ("callback", "_handle", "_loop")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Make sure it fires by ``when`` (a ``loop.time()``); a timer of another loop is replaced."""
        handle = self._handle
        if handle is not None and not handle.cancelled() and self._loop is loop:
            if handle.when() <= when:
                return
            handle.cancel()
        self._handle = loop.call_at(when, self._fire)
        self._loop = loop

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Cancel it and let go of the callback: an owner whose bound method it held is then freed by
        reference counting when it goes, not left as a cycle for the garbage collector."""
        self.cancel()
        self.callback = do_nothing

    def _fire(self) -> None:
        self._handle = None
        self.callback()
