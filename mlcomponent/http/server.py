"""Run uvicorn with our shutdown semantics.

On SIGTERM the service turns not-ready at once, stops accepting, lets in-flight
requests finish (up to the grace period), and exits 0: uvicorn's own handler would
re-raise the signal after draining, which makes the exit status 143.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from uvicorn.supervisors import ChangeReload, Multiprocess

STOP_HOOKS: list[Callable[[], None]] = []
STOPPING = threading.Event()


class GracefulServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        STOPPING.set()
        for hook in STOP_HOOKS:
            hook()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop now
        self.should_exit = True


def run(config: uvicorn.Config) -> None:
    server = GracefulServer(config=config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        Multiprocess(config, target=server.run, sockets=[config.bind_socket()]).run()
    else:
        server.run()
