"""Slow and many clients: header and body deadlines, and a connection cap that keeps `accept`
working, so new clients are served while slow ones hold on (slowloris at a lowered fd limit)."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support import Server, serve, write_manifest

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


async def _hello(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def test_a_closed_connection_is_freed_at_once_not_left_to_the_garbage_collector() -> None:
    """Each closed connection used to stay as a cycle (its timer held a method of it; asyncio's transport
    holds one of itself) until the cyclic GC ran: +20 MB under connection churn, and collections."""
    import asyncio
    import gc
    from asyncio.selector_events import _SelectorSocketTransport

    import uvicorn

    from mlcomponent.http.connections import PROTOCOL, GuardedHttpToolsProtocol

    def talk(port: int, count: int) -> list[bytes]:
        answers = []
        for i in range(count):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                closing = b"Connection: close\r\n" if i % 2 else b""  # closed by the server, or by the client
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n" + closing + b"\r\n")
                answers.append(read_answer(sock))
        return answers

    async def scenario() -> None:
        config = uvicorn.Config(_hello, host="127.0.0.1", port=0, http=PROTOCOL, loop="asyncio", lifespan="off",
                                log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started and not serving.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.started
        try:
            port = server.servers[0].sockets[0].getsockname()[1]
            answers = await asyncio.to_thread(talk, port, 20)
            assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
            while server.server_state.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # until the server has seen every close
            assert not server.server_state.connections
            left = [o for o in gc.get_objects() if isinstance(o, GuardedHttpToolsProtocol | _SelectorSocketTransport)]
            assert left == [], f"{len(left)} closed connections wait for the cyclic GC"
        finally:
            server.should_exit = True
            await serving

    gc.collect()
    gc.disable()  # only reference counting frees anything during the scenario
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()
