"""Answers the connection gives before the ASGI app: admission's refusals.

Under overload most requests are refused (503 + ``Retry-After``), and a refusal through
uvicorn's request cycle and the ASGI app cost about 80 µs, most of it the cycle (a task,
its events, two header-checked sends), not the decision. The gateway offers
``answer_early``: given a request's method, URL and headers, as soon as its head is
parsed, it returns the whole answer (status, headers, body) when the request is to be
refused now, else None and the request goes the usual way. The connection
(``connections.py``) writes that answer at once, with uvicorn's default headers, and
discards the request's body as it arrives (the same as when the app answers without
reading it). Everything but the path to the socket is the app's: the same admission, the
same error text and request id, the same metrics. The gateway asks only while the service
is shedding load (a refusal in the last second), so requests it admits pay next to nothing
for it (the admission check would otherwise run twice: 2–4 µs a request at 1,000
connections).
"""

from __future__ import annotations

import http
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import httptools

Headers = Sequence[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]  # status, headers (content-length included), body
AnswerEarly = Callable[[str, bytes, str, Headers], Answer | None]  # (method, URL, root path, headers)
LOOKUP_DEPTH = 4  # uvicorn wraps the app (proxy headers, message logger) a level or two deep


class _Answered:
    """The request cycle of a request answered early: complete, so uvicorn ignores its body and starts the
    next request at once, and a closed connection has nothing to wake. One for every connection, and
    nothing can be set on it (uvicorn sets ``disconnected`` only on an incomplete cycle)."""

    __slots__ = ()
    response_complete = True
    more_body = False

    class message_event:  # noqa: N801 - uvicorn calls ``cycle.message_event.set()`` when the connection goes
        @staticmethod
        def set() -> None:
            """Nothing waits on an answered request."""


ANSWERED: Any = _Answered()  # one for every connection: nothing in it is per request


def answer_early_of(app: object) -> AnswerEarly | None:
    """The app's ``answer_early``, found through uvicorn's wrappers (each holds the next in ``app``). A
    middleware of our own around the gateway must offer ``answer_early`` itself, or answer everything: one
    that does neither would be skipped for refusals."""
    for _ in range(LOOKUP_DEPTH):
        hook = getattr(app, "answer_early", None)
        if hook is not None:
            return hook  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def request_path(url: bytes, root_path: str) -> str:
    """The ASGI scope's ``path`` of a request line's URL, as uvicorn makes it."""
    path = httptools.parse_url(url).path.decode("ascii")
    return root_path + (urllib.parse.unquote(path) if "%" in path else path)


def render(answer: Answer, default_headers: Headers, keep_alive: bool) -> bytes:
    """The answer on the wire, as uvicorn writes one: status line, its default headers (``server``, ``date``),
    the answer's, and ``connection: close`` when the connection ends after it."""
    status, headers, body = answer
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
    parts += [b"%s: %s\r\n" % pair for pair in (*default_headers, *headers)]
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += [b"\r\n", body]
    return b"".join(parts)
