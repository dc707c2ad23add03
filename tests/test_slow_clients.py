"""Slow and many clients: header and body deadlines, and a connection cap that keeps `accept`
working, so new clients are served while slow ones hold on (slowloris at a lowered fd limit)."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from mlcomponent.http.connections import Guard, GuardedHttpToolsProtocol
from tests.support import Server, cyclic_gc_off, serve, uvicorn_on_loopback, write_manifest

INFER = "/v2/models/test-model/infer"
BODY = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}], "outputs": [{"name": "x"}]}
PARTIAL = b"POST /v2/models/test-model/infer HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


class Slowloris:
    """Holds ``count`` connections that never finish their headers; reopens those the server closes
    (at most ``per_second`` a second), until stopped."""

    def __init__(self, target: tuple[str, int], count: int, per_second: int = 100) -> None:
        self.target = target
        self.count = count
        self.per_second = per_second
        self.sockets: list[socket.socket] = []
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection(self.target, timeout=10)
        sock.sendall(PARTIAL)
        sock.setblocking(False)
        self.sockets.append(sock)

    def __enter__(self) -> Slowloris:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select(self.sockets, [], [], 0.2)
            for sock in readable:
                try:
                    gone = sock.recv(4096) == b""
                except OSError:
                    gone = True
                if gone:
                    sock.close()
                    self.sockets.remove(sock)
                    self.closed_by_server += 1
            reopened = 0
            while len(self.sockets) < self.count and reopened < self.per_second // 5 and not self._stop.is_set():
                try:
                    self._open()
                except OSError:
                    break
                reopened += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def fd_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("slowloris")
    with serve(write_manifest(folder, "echo.inference"), data_root=folder / "data", open_files=256) as server:
        yield server


def test_new_clients_are_served_while_300_slow_connections_are_held_at_256_open_files(fd_limited: Server) -> None:
    def new_client(index: int) -> int:
        with httpx.Client(base_url=fd_limited.url, timeout=30) as client:  # a new connection each time
            return client.post(INFER, json=BODY).status_code

    with Slowloris(address(fd_limited), 300) as attack:
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(new_client, range(63)))
        assert len(attack.sockets) + attack.closed_by_server >= 300
    assert statuses == [200] * 63
    with httpx.Client(base_url=fd_limited.url, timeout=30) as client:
        assert client.get("/v2/health/ready").status_code == 200
    assert "connection cap reached (128 open, --max-connections)" in fd_limited.output()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("impatient")
    with serve(write_manifest(folder, "echo.inference"), "--header-timeout", "1", "--body-timeout", "1",
               "--min-body-rate-kib", "0.01", data_root=folder / "data") as server:
        yield server


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_headers_that_do_not_arrive_in_time_get_408_and_are_logged(impatient: Server) -> None:
    with socket.create_connection(address(impatient), timeout=60) as sock:
        sock.sendall(PARTIAL)
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"--header-timeout" in reply
    assert "its request headers did not arrive within 1 s (--header-timeout)" in impatient.output()


def test_a_body_that_stops_arriving_closes_the_connection_and_is_logged(impatient: Server) -> None:
    with socket.create_connection(address(impatient), timeout=60) as sock:
        sock.sendall(PARTIAL + b"Content-Length: 1000\r\n\r\n" + b'{"inputs": [')
        reply = read_until_closed(sock)
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    deadline = time.monotonic() + 30
    while "its request body stopped arriving for 1 s (--body-timeout)" not in impatient.output():
        assert time.monotonic() < deadline, impatient.output()[-2000:]
        time.sleep(0.05)
    files = Path(impatient.data_root) / "files"
    assert not files.exists() or not any(p.is_file() for p in files.rglob("*"))


def test_a_slow_but_steady_client_is_not_cut_off(impatient: Server) -> None:
    """A body above --min-body-rate-kib is served however long it takes: pieces of 5 bytes 0.1 s apart (50 bytes/s,
    1 s and more in all) against a minimum of 0.01 KiB/s (10 bytes/s) over each 1 s window."""
    payload = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}]}'
    with socket.create_connection(address(impatient), timeout=60) as sock:
        sock.sendall(b"POST /v2/models/test-model/infer HTTP/1.1\r\nHost: slow\r\nConnection: close\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode())
        for index in range(0, len(payload), 5):
            sock.sendall(payload[index:index + 5])
            time.sleep(0.1)
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]


def read_answer(sock: socket.socket) -> bytes:
    """One keep-alive answer: its head and its Content-Length of body."""
    def more() -> bytes:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection mid-answer: {received[:200]!r}"
        return chunk

    received = b""
    while b"\r\n\r\n" not in received:
        received += more()
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += more()
    return head


def test_a_keep_alive_connections_header_deadline_counts_from_its_last_answer(impatient: Server) -> None:
    """--header-timeout 1 s: a request 0.6 s after the connection opened, the next 0.6 s after that answer
    (1.2 s after the connection opened) is served; then, idle, the connection gets 408."""
    payload = b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}]}'
    request = (f"POST {INFER} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    with socket.create_connection(address(impatient), timeout=60) as sock:
        opened = time.monotonic()
        for _ in range(2):
            time.sleep(0.6)
            sock.sendall(request)
            assert read_answer(sock).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - opened > 1.2  # past the first deadline, within the one after the last answer
        answered = time.monotonic()
        reply = read_until_closed(sock)
        idle = time.monotonic() - answered
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert 0.5 < idle < 30, idle




class Hold:
    """`/hold` waits until `release` is set; `started` tells the client it is running."""

    started = threading.Event()
    release: asyncio.Event | None = None


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/hold" and Hold.release is not None:
        Hold.started.set()
        await Hold.release.wait()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

class RecordedProtocol(GuardedHttpToolsProtocol):
    """Keeps a weak reference to each connection and its transport: were they freed?"""

    seen: list[weakref.ref[object]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        RecordedProtocol.seen += [weakref.ref(self), weakref.ref(transport)]
        super().connection_made(transport)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset: the server sees an error and aborts its side."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _clients(port: int) -> list[bytes]:
    """Every way a connection ends: the client closes, the server closes (`Connection: close`), a reset
    after an answer, a reset while a request runs and another waits behind it (pipelined), and a 431."""
    heads = []
    for closing in (b"", b"Connection: close\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + closing + b"\r\n")
            heads.append(read_answer(sock))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    heads.append(read_answer(sock))
    _reset(sock)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert Hold.started.wait(10)  # the first runs, the second waits behind it
    _reset(sock)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Many: 1\r\n" * 120 + b"\r\n")
        heads.append(read_until_closed(sock)[:12])
    return heads


def test_a_closed_connection_is_freed_at_once_not_left_to_the_garbage_collector() -> None:
    """Each closed connection used to stay as a cycle (its timer held a method of it; asyncio's transport
    holds one of itself) until the cyclic GC ran: +20 MB under connection churn, and collections."""
    async def scenario() -> None:
        Hold.started.clear()
        Hold.release = asyncio.Event()
        async with uvicorn_on_loopback(_hello, RecordedProtocol) as (server, port):
            heads = await asyncio.to_thread(_clients, port)
            assert [h[:12] for h in heads] == [b"HTTP/1.1 200"] * 3 + [b"HTTP/1.1 431"], heads
            Hold.release.set()  # its answer finds the reset (reading was paused behind the pipelined request)
            deadline = time.monotonic() + 20
            while server.server_state.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # until the server has seen every connection go
            while any(ref() is not None for ref in RecordedProtocol.seen) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            left = [ref() for ref in RecordedProtocol.seen if ref() is not None]
            assert len(RecordedProtocol.seen) == 10 and left == [], f"{len(left)} objects wait for the cyclic GC"

    RecordedProtocol.seen.clear()
    with cyclic_gc_off():
        asyncio.run(scenario())


class QuickProtocol(GuardedHttpToolsProtocol):
    """--header-timeout 4 s (the guard's), with uvicorn's keep-alive at 2 s (the server's config)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.guard = Guard(header_timeout=4.0, body_timeout=30.0, max_connections=100)


def _idle_after_answer(port: int, then: bytes | None) -> tuple[bytes, float]:
    """One answered request (none when ``then`` is None: a fresh connection), then ``then`` (part of a head) or
    nothing; returns what the server sent afterwards until it closed, and after how long."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if then is not None:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 200")
        idle_from = time.monotonic()
        if then:
            sock.sendall(then)
        return read_until_closed(sock), time.monotonic() - idle_from


def test_an_idle_kept_alive_connection_closes_quietly_after_keep_alive_and_a_partial_head_gets_408() -> None:
    """uvicorn's keep-alive timeout, kept by the connection's own timer: an idle connection closes without a
    word 2 s after its last answer; one that began a head waits for --header-timeout (408); a new connection
    that sends nothing is held to --header-timeout, as before its first request uvicorn has no keep-alive."""
    async def scenario() -> tuple[tuple[bytes, float], ...]:
        async with uvicorn_on_loopback(_hello, QuickProtocol, timeout_keep_alive=2) as (_, port):
            return tuple(await asyncio.gather(
                asyncio.to_thread(_idle_after_answer, port, b""),
                asyncio.to_thread(_idle_after_answer, port, b"GET / HTTP/1.1\r\n"),
                asyncio.to_thread(_idle_after_answer, port, None)))

    idle, partial, fresh = asyncio.run(scenario())
    assert idle[0] == b"" and idle[1] >= 1.9, idle  # had keep-alive not closed it, 408 would come at 4 s
    assert partial[0].startswith(b"HTTP/1.1 408") and partial[1] >= 3.9, partial
    assert fresh[0].startswith(b"HTTP/1.1 408") and fresh[1] >= 3.9, fresh
