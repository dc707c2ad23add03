"""A small answer's head and its body go to the socket in one write (``HeadWithBody``).

A real uvicorn server on loopback with our connection protocol, whose socket transport
records every write (and passes it on): a plain answer is one write; an interim
``100 Continue`` goes out at once (the client waits for it before it sends its body); a
streamed answer's head goes at once, then each chunk; a large body goes in a write of
its own after its head (joining would copy it); an app that fails mid-answer still
sends its head before the connection closes; an error the connection answers itself (a
pipelined request it cannot parse, or with headers over the limit) comes after a head still
held, never before it. The client reads every answer whole.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from mlcomponent.http.connections import OWN_WRITE, GuardedHttpToolsProtocol
from tests.support import uvicorn_on_loopback
from tests.test_early_answers import read_answer, read_head
from tests.test_slow_clients import read_until_closed

LARGE = b"L" * (OWN_WRITE + 1)
HEAD_SENT = threading.Event()  # /held has started its answer and waits, its head held


class RecordingTransport:
    """The socket's transport, passed through; each write's bytes are kept in ``writes``."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RecordingProtocol(GuardedHttpToolsProtocol):
    writes: list[bytes] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(RecordingTransport(transport, RecordingProtocol.writes))  # type: ignore[arg-type]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/held":  # waits after its head until the connection goes; ?small: Content-Length 5, else streamed
        small = scope["query_string"] == b"small"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")] if small else []})
        HEAD_SENT.set()
        await receive()
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})  # chunked
        for chunk in (b"first", b"second"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        return
    body = LARGE if path == "/large" else b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    if path == "/fail":
        raise RuntimeError("the app fails after its answer's head")
    await send({"type": "http.response.body", "body": body})


def exchange(scenario: Callable[[int], None]) -> list[bytes]:
    """Run ``scenario(port)`` in a thread against the server; the writes the connections made."""
    RecordingProtocol.writes = []

    async def main() -> None:
        async with uvicorn_on_loopback(app, RecordingProtocol) as (_, port):
            await asyncio.to_thread(scenario, port)

    asyncio.run(main())
    return RecordingProtocol.writes


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def test_a_plain_answer_is_one_write_and_head_requests_too() -> None:
    def scenario(port: int) -> None:
        with connect(port) as sock:
            sock.sendall(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
            head, body = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"
            sock.sendall(b"HEAD /small HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 200 OK\r\n")

    writes = exchange(scenario)
    assert len(writes) == 2, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\nhello")
    assert writes[1].startswith(b"HTTP/1.1 200 OK\r\n") and writes[1].endswith(b"\r\n\r\n")


def test_100_continue_goes_at_once_and_the_answer_after_it_is_one_write() -> None:
    def scenario(port: int) -> None:
        with connect(port) as sock:
            sock.sendall(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            assert read_head(sock) == b"HTTP/1.1 100 Continue"  # before the body: held, it would never come
            sock.sendall(b"{}")
            head, body = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"

    writes = exchange(scenario)
    assert writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(writes) == 2 and writes[1].endswith(b"\r\n\r\nhello"), writes


def test_a_streamed_answer_sends_its_head_at_once_then_each_chunk() -> None:
    def scenario(port: int) -> None:
        with connect(port) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in answer
            assert answer.endswith(b"\r\n\r\n5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")
        HEAD_SENT.clear()
        with connect(port) as sock:  # its head comes before any body, however long that takes
            sock.sendall(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 200 OK\r\n")

    writes = exchange(scenario)
    assert len(writes) == 5, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n")
    assert writes[1:4] == [b"5\r\nfirst\r\n", b"6\r\nsecond\r\n", b"0\r\n\r\n"]
    assert writes[4].startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in writes[4]


def test_a_large_answer_is_written_after_its_head_not_joined_to_it() -> None:
    def scenario(port: int) -> None:
        with connect(port) as sock:
            sock.sendall(b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n")
            head, body = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == LARGE

    writes = exchange(scenario)
    assert len(writes) == 2 and writes[0].endswith(b"\r\n\r\n") and writes[1] == LARGE, [len(w) for w in writes]


def test_an_app_that_fails_after_its_head_still_sends_the_head_before_the_connection_closes() -> None:
    def scenario(port: int) -> None:
        with connect(port) as sock:
            sock.sendall(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"content-length: 5\r\n\r\n")

    writes = exchange(scenario)
    assert len(writes) == 1 and writes[0].endswith(b"content-length: 5\r\n\r\n"), writes


def test_an_error_the_connection_answers_itself_comes_after_a_head_still_held() -> None:
    """The 400 (unparsable) and 431 (headers over --max-header-kib) the connection writes for a pipelined
    request follow a head still held (an answer whose body has not come yet): the client never reads them
    as its answer."""
    for bad in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n"):
        def scenario(port: int, bad: bytes = bad) -> None:
            HEAD_SENT.clear()
            with connect(port) as sock:
                sock.sendall(b"GET /held?small HTTP/1.1\r\nHost: t\r\n\r\n")  # its head is held
                assert HEAD_SENT.wait(20)
                sock.sendall(bad)
                answer = read_until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
                assert b"\r\n\r\nHTTP/1.1 4" in answer, answer[:400]

        exchange(scenario)
