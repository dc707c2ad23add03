"""Slow and many clients: deadlines for headers and bodies, and a cap on open connections.

uvicorn has no deadline for a request's headers, and it accepts connections until the
process runs out of file descriptors; then ``accept`` fails and new clients are turned
away for as long as slow ones hold on (slowloris). ``GuardedHttpToolsProtocol`` is
uvicorn's httptools protocol with three additions, each logged when it acts (at most
one line per kind every 10 s, with a count):

- **header deadline** (``--header-timeout``, 10 s): a request's headers must be complete
  within this time of the connection becoming idle (opened, or its last answer sent);
  else ``408`` and the connection is closed.
- **body deadline** (``--body-timeout``, 30 s): a body that stops arriving for this long
  (while the server is ready to read it) closes the connection; the request fails.
- **connection cap** (``--max-connections``; default half the open-file limit, at most
  4096): the open-file limit is never reached, so ``accept`` keeps
  working; past the cap the connection that has waited longest for its headers (a
  slow client, or an idle keep-alive one) is closed to make room, or, when every
  connection is busy with a request, the newcomer gets ``503`` and is closed.

uvicorn is told to use it by import string (``serve`` sets ``http=PROTOCOL``), so every
worker process builds its own from the options ``serve`` passes in the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlcomponent.options import DEFAULTS, OPTIONS_ENV, ServeOptions

PROTOCOL = "mlcomponent.http.connections:GuardedHttpToolsProtocol"
REPORT_EVERY = 10.0  # seconds between two log lines of one kind
MAX_DEFAULT_CONNECTIONS = 4096
log = logging.getLogger("mlcomponent.http.connections")

TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s")
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


def default_max_connections(open_files: int | None = None) -> int:
    """Half the open-file limit, at most 4096.

    The other half: a burst of connections is accepted before the first is seen (and
    room made), and the worker's pipes, request files and S3 connections need some too.
    """
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files == resource.RLIM_INFINITY:
            return MAX_DEFAULT_CONNECTIONS
    return max(8, min(MAX_DEFAULT_CONNECTIONS, open_files // 2))


class Guard:
    """One process's limits and its rate-limited reports."""

    def __init__(self, header_timeout: float, body_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self._reported: dict[str, tuple[float, int]] = {}  # kind -> (last line's time, events since)

    @classmethod
    def from_environ(cls) -> Guard:
        options = ServeOptions.from_env(os.environ) if OPTIONS_ENV in os.environ else DEFAULTS
        return cls(options.header_timeout, options.body_timeout,
                   options.max_connections or default_max_connections())

    def report(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last, count = self._reported.get(kind, (-REPORT_EVERY, 0))
        if now - last < REPORT_EVERY:
            self._reported[kind] = (last, count + 1)
            return
        more = f" ({count} more since the last report)" if count else ""
        log.warning("%s%s", message, more)
        self._reported[kind] = (now, 0)


_guard: Guard | None = None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def guard() -> Guard:
    global _guard
    if _guard is None:
        _guard = Guard.from_environ()
    return _guard


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One timer per connection for both deadlines, re-armed only when it fires: a request moves
    timestamps (``idle_since``, ``body_since``), never timers (a timer armed and cancelled per
    request and per body chunk cost more than the rest of the guard)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard()
        self.idle_since = 0.0  # when it began to wait for a request's headers
        self.waiting_for_headers = True
        self.body_since: float | None = None  # the body's last progress; None: no body being read
        self.timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------------- connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.guard.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for its headers, or this one."""
        oldest: GuardedHttpToolsProtocol | None = None
        for other in self.connections:
            if (other is not self and isinstance(other, GuardedHttpToolsProtocol) and other.waiting_for_headers
                    and not other.transport.is_closing()
                    and (oldest is None or other.idle_since < oldest.idle_since)):
                oldest = other
        cap = self.guard.max_connections
        if oldest is not None:
            self.guard.report("cap", f"connection cap reached ({cap} open, --max-connections): closed the "
                                     "connection that waited longest for its request headers")
            oldest._cancel_timers()
            oldest.transport.abort()
            return
        self.guard.report("busy", f"connection cap reached ({cap} open, --max-connections) and every connection "
                                  "is busy with a request: refused a new one with 503")
        body = b'{"error":"the server has too many open connections; retry shortly"}'
        self.transport.write(BUSY % (len(body), body))
        self.transport.close()

    # ----------------------------------------------------------------------- deadlines

    def _arm(self, when: float) -> None:
        """Make sure the timer fires by ``when`` (it checks both deadlines and re-arms itself)."""
        if self.timer is None or self.timer.when() > when:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(when, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self.timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.waiting_for_headers:
            due = self.idle_since + self.guard.header_timeout
            if now >= due:
                self._headers_too_slow()
            else:
                self._arm(due)
        elif self.body_since is not None:
            due = self.body_since + self.guard.body_timeout
            if now >= due:
                self._body_too_slow()
            else:
                self._arm(due)
        # else: a request is being answered; the next wait for headers arms the timer again

    # ----------------------------------------------------------------------- header deadline

    def _await_headers(self) -> None:
        self.waiting_for_headers = True
        self.body_since = None
        self.idle_since = self.loop.time()
        self._arm(self.idle_since + self.guard.header_timeout)

    def _headers_too_slow(self) -> None:
        client = _peer(self.client)
        self.guard.report("headers", f"closed the connection from {client}: its request headers did not arrive "
                                     f"within {self.guard.header_timeout:g} s (--header-timeout)")
        body = b'{"error":"the request headers did not arrive in time (--header-timeout)"}'
        self.transport.write(TIMED_OUT % (len(body), body))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self.waiting_for_headers = False
        super().on_headers_complete()
        self._await_body()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # the next request's headers are already here
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_headers()  # idle (keep-alive): the next request's headers have a deadline too

    # ----------------------------------------------------------------------- body deadline

    def _await_body(self) -> None:
        self.body_since = self.loop.time()
        self._arm(self.body_since + self.guard.body_timeout)

    def _body_too_slow(self) -> None:
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete:
            self.body_since = None
            return
        if self.flow.read_paused:  # we are not reading (the app is busy): not the client's fault
            self._await_body()
            return
        client = _peer(self.client)
        self.guard.report("body", f"closed the connection from {client}: its request body stopped arriving for "
                                  f"{self.guard.body_timeout:g} s (--body-timeout)")
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self.body_since is not None:
            self.body_since = self.loop.time()  # progress: the deadline starts again

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.body_since = None

    def _cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
