"""Run uvicorn with our shutdown semantics.

On SIGTERM the service turns not-ready at once (``on_terminate``, installed by the
app at start-up in every worker), stops accepting, lets in-flight requests finish (up
to the grace period), and exits 0. With one worker that is ``GracefulServer``:
uvicorn's own handler would re-raise the signal after draining, which makes the exit
status 143 (also under ``--reload``). With ``--workers N`` uvicorn's supervisor runs its own
``Server`` in each worker; the readiness flip still comes from ``on_terminate``.

``MetricsMultiprocess`` is uvicorn's supervisor, plus: a worker that died (and was
replaced) is marked dead for prometheus-client's multiprocess mode, so its ``livesum``
gauges (requests in flight, queued) stop counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import ChangeReload, Multiprocess

TICK_SECONDS = 0.1  # as uvicorn's own main loop


class GracefulServer(uvicorn.Server):
    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        """uvicorn's ticks (every 0.1 s: the Date header, --limit-max-requests), but a signal wakes it at once.

        uvicorn's own loop notices ``should_exit`` at its next tick: up to 0.1 s more per stop.
        """
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 1) % 864000
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
        finally:
            self._loop = self._wake = None  # a signal after the run finds no closed loop to wake

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop now
        self.should_exit = True
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


def on_terminate(hook: Callable[[], None]) -> None:
    """Call ``hook`` first when SIGTERM or SIGINT arrives, then whatever handled it before."""
    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(number)

        def chained(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
            hook()
            if callable(previous):
                previous(sig, frame)

        signal.signal(number, chained)


class MetricsMultiprocess(Multiprocess):
    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        gone = before - {process.pid for process in self.processes}
        if gone and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            for pid in gone:
                if pid is not None:
                    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def run(config: uvicorn.Config) -> None:
    server = GracefulServer(config=config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        MetricsMultiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
