"""Slow and many clients: deadlines for headers and bodies, header limits, and a cap on open connections.

uvicorn has no deadline for a request's headers, and it accepts connections until the
process runs out of file descriptors; then ``accept`` fails and new clients are turned
away for as long as slow ones hold on (slowloris). ``GuardedHttpToolsProtocol`` is
uvicorn's httptools protocol with these additions, each logged when it acts (at most
one line per kind every 10 s, with a count):

- **header deadline** (``--header-timeout``, 10 s): a request's headers must be complete
  within this time of the connection becoming idle (opened, or its last answer sent);
  else ``408`` and the connection is closed.
- **header limits** (``--max-header-kib``, 64, and ``--max-headers``, 100):
  counted on the bytes as they arrive, before httptools sees them (it grows a header
  by concatenation, on the event loop); past either, ``431`` and the connection is closed.
- **body deadline and rate** (``--body-timeout``, 30 s, and ``--min-body-rate-kib``,
  1 KiB/s): every ``--body-timeout`` seconds in which the server was ready to read,
  the body must have brought at least that many seconds' worth of the minimum rate;
  else the connection is closed and the request fails. The window is not restarted by
  each byte, so a byte now and then does not keep a connection.
- **write deadline** (``--write-timeout``, 30 s): an answer the client does not read
  (the socket's buffer stays full) for this long closes the connection, and the answer
  held for it is freed.
- **connection cap** (``--max-connections``; default half the open-file limit, at most
  4096): the open-file limit is never reached, so ``accept`` keeps working; past the cap
  the slowest connection in its headers or body (the furthest behind the minimum rate;
  an idle keep-alive one is behind from its first second) is closed to make room, or,
  when every other connection is busy with a request or keeping up, the newcomer gets
  ``503`` and is closed.

- **early answers** (``early.py``): while the service is shedding load, an infer request
  that admission refuses is answered from its head, before uvicorn makes a request cycle;
  its body is discarded as it arrives (still held to the body deadline and rate), and the
  next request's header deadline and keep-alive start once that body has come, as after
  any answer given before its request's body ended. uvicorn's keep-alive timeout is kept by the same
  check timer as the deadlines (uvicorn arms and cancels a timer per request).

uvicorn is told to use it by import string (``serve`` sets ``http=PROTOCOL``), so every
worker process builds its own from the options ``serve`` passes in the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
import traceback
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlcomponent.http.early import ANSWERED, AnswerEarly, answer_early_of, render
from mlcomponent.options import DEFAULTS, OPTIONS_ENV, ServeOptions
from mlcomponent.timers import EarliestTimer, do_nothing

PROTOCOL = "mlcomponent.http.connections:GuardedHttpToolsProtocol"
REPORT_EVERY = 10.0  # seconds between two log lines of one kind
MAX_DEFAULT_CONNECTIONS = 4096
BODY_GRACE = 1.0  # seconds a body is never evicted for: its head and its first bytes often come apart
log = logging.getLogger("mlcomponent.http.connections")

TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
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

    def __init__(self, header_timeout: float, body_timeout: float, max_connections: int, *,
                 max_header_bytes: int = DEFAULTS.max_header_bytes, max_headers: int = DEFAULTS.max_headers,
                 min_body_rate: float = DEFAULTS.min_body_rate_bytes,
                 write_timeout: float = DEFAULTS.write_timeout) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.min_body_rate = min_body_rate
        self.write_timeout = write_timeout
        self._reported: dict[str, tuple[float, int]] = {}  # kind -> (last line's time, events since)

    @classmethod
    def from_environ(cls) -> Guard:
        options = ServeOptions.from_env(os.environ) if OPTIONS_ENV in os.environ else DEFAULTS
        return cls(options.header_timeout, options.body_timeout,
                   options.max_connections or default_max_connections(),
                   max_header_bytes=options.max_header_bytes, max_headers=options.max_headers,
                   min_body_rate=options.min_body_rate_bytes, write_timeout=options.write_timeout)

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


def _drop_self_references(transport: asyncio.BaseTransport) -> None:
    """asyncio's selector transport keeps bound methods of itself (``_read_ready_cb``; ``_write_ready`` from
    Python 3.12), cycles that its ``close()`` clears on some paths and ``abort()`` on none. Once the
    connection is lost it neither reads nor writes: cleared, it and its socket are freed at once."""
    state = getattr(transport, "__dict__", {})
    for name in ("_read_ready_cb", "_write_ready"):
        if name in state:
            state[name] = None


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # uvicorn's interim answer to Expect: 100-continue
OWN_WRITE = 64 * 1024  # a body this large is written after its head, not joined to it (a copy)


class HeldHead:
    """A connection's answer head not yet written. One a connection: its cycles answer one at a time,
    and the connection's own answers (431, 400) flush it first, so they never overtake it."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head: bytes | None = None

    def flush(self, transport: asyncio.Transport) -> None:
        """Write the held head now, if there is one."""
        if self.head is not None:
            head, self.head = self.head, None
            transport.write(head)


class HeadWithBody:
    """The connection as a request cycle writes to it: the head of a small answer (a Content-Length under
    ``OWN_WRITE``) waits for its body, and the two go in one ``send`` (uvicorn writes them apart: two
    system calls and two segments for every answer; measured: 2 to 4 µs of server CPU a request). The
    head of a large or streamed answer (a download) goes at once, as does an interim ``100 Continue``;
    a head still held when the cycle closes the connection (an app that failed mid-answer) goes before
    the close. Not for HEAD requests: uvicorn writes no body for them."""

    __slots__ = ("transport", "held", "started")

    def __init__(self, transport: asyncio.Transport, held: HeldHead) -> None:
        self.transport = transport
        self.held = held
        self.started = False

    def write(self, data: bytes) -> None:
        held = self.held
        head = held.head
        if head is not None:
            held.head = None
            if len(data) < OWN_WRITE:
                self.transport.write(head + data)
                return
            self.transport.write(head)
        elif not self.started and data != CONTINUE:
            self.started = True
            if small_answer(data):
                held.head = data
                return
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.held.flush(self.transport)
        self.transport.close()


def small_answer(head: bytes) -> bool:
    """Whether an answer's head (as uvicorn writes it: names lower-case) declares a body under ``OWN_WRITE``."""
    start = head.find(b"\r\ncontent-length: ")
    if start < 0:
        return False
    start += 18
    length = head[start:head.find(b"\r\n", start)]
    return length.isdigit() and int(length) < OWN_WRITE


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard()
        self.idle_since = 0.0  # when it began to wait for a request's headers
        self.waiting_for_headers = True
        self.header_deadline: float | None = None  # loop time by which the awaited headers must be complete
        self.body_window_end: float | None = None  # loop time at which the body's --body-timeout window ends
        self.check_timer = EarliestTimer(self._check)  # one timer for both, re-armed only when it fires early
        self.write_timer: asyncio.TimerHandle | None = None
        self.keep_alive_end: float | None = None  # loop time at which an idle kept-alive connection closes
        self.body_incomplete = False  # a request's head has come and its body has not all come yet
        self.in_headers = True  # the next bytes belong to a request's head (counted for the header limits)
        self.head_bytes = 0
        self.head_lines = 0
        self.head_tail = b""  # the last bytes of the head so far: its end (CRLF CRLF) may span two reads
        self.phase_since = 0.0  # when its headers or its body began to be awaited (for the cap's choice)
        self.phase_bytes = 0  # bytes of that phase so far
        self.window_bytes = 0  # body bytes in the current --body-timeout window
        self.refused = False  # answered 431: nothing more is parsed
        self.answer_early: AnswerEarly | None = None  # the app's early answers (admission's refusals), early.py
        self.answered_in_this_read = False  # one early answer per read at most (``_answered_early``)
        self.held = HeldHead()  # the answering cycle's head, until its first body chunk (``HeadWithBody``)

    # ----------------------------------------------------------------------- connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.answer_early = answer_early_of(self.app)
        self._await_headers()
        if len(self.connections) > self.guard.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.check_timer.close()  # it held self._check: a closed connection is freed at once, not by the GC
        super().connection_lost(exc)
        for cycle, _app in self.pipeline:  # requests read ahead that will never run: each one's hook for its
            cycle.on_response = do_nothing  # answer is a method of this connection (uvicorn drops it once run)
        self.pipeline.clear()
        _drop_self_references(self.transport)

    def behind(self, now: float) -> float | None:
        """Seconds this connection is behind: how long its head has been awaited (a head comes in one
        packet), or how far its body is behind --min-body-rate-kib. None: not to be evicted (its request is
        being answered, or the server is not reading it)."""
        elapsed = now - self.phase_since
        if self.transport.is_closing():
            return None
        if self.waiting_for_headers:  # one just accepted, nothing read yet, goes last: its head may be queued
            return elapsed if self.phase_bytes or elapsed >= BODY_GRACE else elapsed - BODY_GRACE
        cycle = self.cycle
        rate = self.guard.min_body_rate
        if (cycle is None or not cycle.more_body or cycle.response_complete or self.flow.read_paused or rate <= 0
                or elapsed < BODY_GRACE):
            return None
        return elapsed - self.phase_bytes / rate

    def _make_room(self) -> None:
        """Over the cap: close the slowest connection in its headers or body, or this one."""
        now = self.loop.time()
        slowest: GuardedHttpToolsProtocol | None = None
        worst = 0.0
        for other in self.connections:
            if other is self or not isinstance(other, GuardedHttpToolsProtocol):
                continue
            behind = other.behind(now)
            if behind is None or (not other.waiting_for_headers and behind <= 0):
                continue  # a body that keeps up is never cut for a newcomer; a head may be
            if slowest is None or behind > worst:
                slowest, worst = other, behind
        cap = self.guard.max_connections
        if slowest is not None:
            phase = "headers" if slowest.waiting_for_headers else "body"
            self.guard.report(f"cap-{phase}", f"connection cap reached ({cap} open, --max-connections): closed the "
                                     f"slowest connection (in its request {phase})")
            slowest._cancel_timers()
            slowest.transport.abort()
            return
        self.guard.report("busy", f"connection cap reached ({cap} open, --max-connections) and every connection "
                                  "is busy with a request: refused a new one with 503")
        body = b'{"error":"the server has too many open connections; retry shortly"}'
        self.transport.write(BUSY % (len(body), body))
        self.transport.close()

    # ----------------------------------------------------------------------- header deadline

    def _arm(self, deadline: float) -> None:
        """The header and body deadlines move on with every request; arming and cancelling two timers a
        request cost about 4 µs of a small one's CPU. One timer fires by the earliest, and ``_check``
        acts on those that have passed and arms it for the next."""
        self.check_timer.arm(self.loop, deadline)

    def _check(self) -> None:
        if self.transport.is_closing():
            return
        now = self.loop.time()
        header, body, idle_end = self.header_deadline, self.body_window_end, self.keep_alive_end
        if idle_end is not None and self.waiting_for_headers and self.phase_bytes == 0:
            if now >= idle_end:  # uvicorn's keep-alive timeout: nothing since the last answer
                self.transport.close()
                return
            self._arm(idle_end)
        if header is not None and self.waiting_for_headers:
            if now >= header:
                self._headers_too_slow()
                return
            self._arm(header)
        if body is not None:
            if now >= body:
                self._body_window_over()
            else:
                self._arm(body)

    def _await_headers(self, keep_alive: bool = False) -> None:
        """The next request's headers are awaited: from a new connection, or (``keep_alive``) after an answer,
        when the connection also closes, quietly, if nothing at all arrives within uvicorn's keep-alive timeout
        (``timeout_keep_alive``, 5 s as serve runs it)."""
        self.waiting_for_headers = True
        self.idle_since = self.phase_since = now = self.loop.time()
        self.phase_bytes = 0
        self.body_window_end = None
        self.header_deadline = deadline = now + self.guard.header_timeout
        self.keep_alive_end = end = now + self.timeout_keep_alive if keep_alive else None
        self._arm(deadline if end is None else min(deadline, end))

    def _headers_too_slow(self) -> None:
        client = _peer(self.client)
        self.guard.report("headers", f"closed the connection from {client}: its request headers did not arrive "
                                     f"within {self.guard.header_timeout:g} s (--header-timeout)")
        body = b'{"error":"the request headers did not arrive in time (--header-timeout)"}'
        self.transport.write(TIMED_OUT % (len(body), body))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self.waiting_for_headers = False
        self.in_headers = False
        self.body_incomplete = True  # until on_message_complete, answered or not: the body rules hold till then
        self.header_deadline = self.keep_alive_end = None
        self.phase_since = now = self.loop.time()
        self.phase_bytes = self.window_bytes = 0
        self._await_body(now)
        if not self._answered_early():
            before = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            # a new request cycle (an upgrade makes none); uvicorn writes no body for HEAD: its head goes alone
            if cycle is not None and cycle is not before and self.scope["method"] != "HEAD":
                cycle.transport = HeadWithBody(self.transport, self.held)  # type: ignore[assignment]

    def _answered_early(self) -> bool:
        """Whether the app answered this request from its head (a refusal, ``early.py``): written now, its
        body discarded as it comes. Only in the plain case: nothing before it unanswered on this connection,
        the first such answer of this read (a client that pipelines thousands of requests in one read gets
        the rest answered in turn through the app, which stops reading, not all at once on the loop), a
        body framed by Content-Length (a malformed chunked or other coded body is found only after the head,
        and must get the parser's 400 alone), no ``Expect: 100-continue``, no upgrade, and the transport
        under its high-water mark."""
        answer_early = self.answer_early
        parser = self.parser
        if (answer_early is None or self.answered_in_this_read or parser.get_method() != b"POST"
                or self.expect_100_continue or self.pipeline or self.flow.write_paused
                or not (self.cycle is None or self.cycle.response_complete) or parser.should_upgrade()
                or any(name == b"transfer-encoding" for name, _ in self.headers)):
            return False
        try:
            answer = answer_early("POST", self.url, self.root_path, self.headers)
            if answer is None:
                return False
            keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            written = render(answer, self.server_state.default_headers, keep_alive)
        except Exception:  # noqa: BLE001 - httptools would turn it into the client's 400 and log nothing
            # the traceback as text: a record holding the frames would hold this connection as long as it is kept
            log.error("answering a request from its head failed; the app answers it instead\n%s",
                      traceback.format_exc())
            return False
        self.answered_in_this_read = True
        self.cycle = ANSWERED
        self.transport.write(written)
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # the next head is awaited once this request's body has come
        return True

    # ----------------------------------------------------------------------- header limits

    def data_received(self, data: bytes) -> None:
        if self.refused or (self.in_headers and not self._head_fits(data)):
            return
        if self.waiting_for_headers:
            self.phase_bytes += len(data)
        self.answered_in_this_read = False
        super().data_received(data)

    def _head_fits(self, data: bytes) -> bool:
        """Count the head's bytes and lines as they arrive; past a limit answer 431 and close."""
        seen = self.head_tail + data
        end = seen.find(b"\r\n\r\n")
        head = data if end < 0 else seen[len(self.head_tail):end + 4]
        self.head_bytes += len(head)
        self.head_lines += head.count(b"\n")
        self.head_tail = seen[-3:]
        if end >= 0:
            self.in_headers = False  # the rest is a body: on_headers_complete confirms it
        limit = self.guard
        if self.head_bytes <= limit.max_header_bytes and self.head_lines <= limit.max_headers + 2:
            return True  # + the request line and the blank line
        what = (f"over {limit.max_header_bytes} bytes (--max-header-kib)" if self.head_bytes > limit.max_header_bytes
                else f"more than {limit.max_headers} header fields (--max-headers)")
        self.guard.report("head", f"closed the connection from {_peer(self.client)}: its request headers were {what}")
        body = b'{"error":"the request headers are %s; send fewer or shorter headers"}' % what.encode()
        self._cancel_timers()
        self.held.flush(self.transport)  # an answer still being written comes first
        self.transport.write(TOO_LARGE % (len(body), body))
        self.transport.close()
        self.in_headers = False
        self.refused = True  # whatever else was read is dropped, never parsed
        return False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._new_head()
        self.body_window_end = None
        self.body_incomplete = False
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline and not self.transport.is_closing():
            self._await_headers(keep_alive=True)  # answered before its body ended: idle from now

    def _new_head(self) -> None:
        self.in_headers = True
        self.head_bytes = self.head_lines = 0
        self.head_tail = b""

    def on_response_complete(self) -> None:
        """uvicorn's, but its keep-alive timer is our check timer's: uvicorn arms a timer after every answer and
        cancels it at the next request, and at 1,000 connections that heap of timers cost 3–6% of the
        throughput (docs/benchmarks.md). The idle connection still closes after uvicorn's ``timeout_keep_alive``."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # the next request's headers are already here: it runs now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self.body_incomplete:  # else answered before its body came: on_message_complete waits from there
            self._await_headers(keep_alive=True)  # idle: closed quietly past keep-alive, 408 past --header-timeout

    # ----------------------------------------------------------------------- body deadline

    def _await_body(self, now: float) -> None:
        """A --body-timeout window begins."""
        self.body_window_end = end = now + self.guard.body_timeout
        self._arm(end)

    def _body_window_over(self) -> None:
        """The end of a --body-timeout window: enough bytes in it (at --min-body-rate-kib), or the connection closes."""
        self.body_window_end = None
        if not self.body_incomplete:  # also while a body answered before it ended still comes: its rate holds
            return
        received, self.window_bytes = self.window_bytes, 0
        if self.flow.read_paused:  # we are not reading (the app is busy): not the client's fault
            self._await_body(self.loop.time())
            return
        guard = self.guard
        needed = guard.min_body_rate * guard.body_timeout
        if received >= max(needed, 1):
            self._await_body(self.loop.time())  # kept up: the next window
            return
        client = _peer(self.client)
        if received == 0:
            guard.report("body", f"closed the connection from {client}: its request body stopped arriving for "
                                 f"{guard.body_timeout:g} s (--body-timeout)")
        else:
            guard.report("body-rate", f"closed the connection from {client}: its request body arrived at "
                                      f"{received / guard.body_timeout / 1024:.3g} KiB/s over {guard.body_timeout:g} s, "
                                      f"under {guard.min_body_rate / 1024:g} (--min-body-rate-kib)")
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self.phase_bytes += len(body)
        self.window_bytes += len(body)

    # ----------------------------------------------------------------------- write deadline

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_timer is None:
            self.write_timer = self.loop.call_later(self.guard.write_timeout, self._write_too_slow)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for a request it cannot parse, after the answer still being written, if any."""
        self.held.flush(self.transport)
        super().send_400_response(msg)

    def _write_too_slow(self) -> None:
        self.write_timer = None
        if self.transport.is_closing():
            return
        self.guard.report("write", f"closed the connection from {_peer(self.client)}: it did not read its answer "
                                   f"for {self.guard.write_timeout:g} s (--write-timeout)")
        self._cancel_timers()
        self.transport.abort()  # frees the answer held in the transport's buffer

    def _cancel_timers(self) -> None:
        self.check_timer.cancel()
        if self.write_timer is not None:
            self.write_timer.cancel()
        self.write_timer = None
        self.header_deadline = self.body_window_end = self.keep_alive_end = None
