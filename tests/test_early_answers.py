"""Refusals answered by the connection, before the ASGI app (``http/early.py``).

Two levels. The connection's mechanics, in-process against a real uvicorn server and an app
that offers ``answer_early`` and counts what reaches it: the answer is written from the head,
the body is discarded, the connection stays usable, pipelined requests keep their order, one
read gets one early answer at most, and whatever the connection may not answer (Expect,
chunked or other coded bodies, a failing hook) goes to the app. Then the real service (its
app, connection protocol and worker process, under uvicorn in a thread, behind a spy), its
function held by a gate: the refusal it answers early never reaches the app and is the one
the app gives (same status, headers and error), with the client's request id or a minted
one, after auth, and counted the same.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from mlcomponent.http.app import create_app
from mlcomponent.http.connections import Guard, GuardedHttpToolsProtocol
from mlcomponent.http.early import Answer
from mlcomponent.metrics import Metrics
from mlcomponent.options import ServeOptions
from mlcomponent.runtime.service import Service
from mlcomponent.settings import Settings
from tests.support import HTTP, calls_logged, cyclic_gc_off, poll, uvicorn_on_loopback, write_manifest
from tests.test_admission import body
from tests.test_slow_clients import read_until_closed

REFUSAL = b'{"error":"busy"}'
AUTH = {"Authorization": "Bearer s3cret"}


class RefusingApp:
    """Refuses ``POST /refuse`` early (``/boom``: its ``answer_early`` fails); whatever reaches the app is
    answered with ``x-answered-by: app`` and recorded. ``/hold`` waits for ``release``."""

    def __init__(self) -> None:
        self.reached: list[str] = []
        self.holding = threading.Event()
        self.release: asyncio.Event | None = None

    def answer_early(self, method: str, url: bytes, root_path: str,
                     headers: Sequence[tuple[bytes, bytes]]) -> Answer | None:
        if url == b"/boom":
            raise KeyError("a bug in answer_early")
        if method == "POST" and url == b"/refuse":
            return 503, [(b"retry-after", b"1"), (b"content-length", b"%d" % len(REFUSAL))], REFUSAL
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(f"{scope['method']} {scope['path']}")
        if scope["path"] == "/hold" and self.release is not None:
            self.holding.set()
            await self.release.wait()
        while (await receive()).get("more_body"):
            pass
        body = b"app"
        await send({"type": "http.response.start", "status": 503 if scope["path"] == "/refuse" else 200,
                    "headers": [(b"x-answered-by", b"app"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


class RecordedProtocol(GuardedHttpToolsProtocol):
    seen: list[weakref.ref[object]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        RecordedProtocol.seen.append(weakref.ref(self))
        super().connection_made(transport)


class ImpatientProtocol(RecordedProtocol):
    """--header-timeout 1 s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = Guard(header_timeout=1.0, body_timeout=30.0, max_connections=100)


def read_head(sock: socket.socket) -> bytes:
    """An answer's head, byte by byte: nothing after it is read."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(1)
        assert chunk, f"closed mid-answer: {received!r}"
        received += chunk
    return received[:-4]


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One answer: its head and its Content-Length of body (nothing more is read)."""
    head = read_head(sock)
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, f"closed mid-body: {head!r}"
        body += chunk
    return head, body


def post(path: str, body: bytes = b"{}", extra: bytes = b"", version: bytes = b"1.1") -> tuple[bytes, bytes]:
    """A request's head and body, apart: a test may send the head alone first."""
    return (b"POST %s HTTP/%s\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n" % (path.encode(), version, len(body), extra),
            body)


def in_process(scenario: Callable[[int, RefusingApp], None], keep_alive: float = 5, hold_for: float = 0,
               protocol: type[GuardedHttpToolsProtocol] = RecordedProtocol) -> None:
    """Run ``scenario(port, app)`` in a thread against a real uvicorn server on loopback (GC off: what the
    connections leave is freed by reference counting alone, as for any other connection). ``/hold`` is let
    go ``hold_for`` seconds after it starts."""
    app = RefusingApp()

    async def main() -> None:
        app.release = asyncio.Event()
        async with uvicorn_on_loopback(app, protocol, timeout_keep_alive=keep_alive) as (server, port):
            running = asyncio.create_task(asyncio.to_thread(scenario, port, app))
            await asyncio.to_thread(app.holding.wait, 20)
            await asyncio.sleep(hold_for)
            app.release.set()
            await running
            deadline = time.monotonic() + 20
            while server.server_state.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            left = [ref() for ref in RecordedProtocol.seen if ref() is not None]
            assert RecordedProtocol.seen and left == [], f"{len(left)} connections wait for the cyclic GC"

    RecordedProtocol.seen.clear()
    with cyclic_gc_off():
        asyncio.run(main())


def test_the_connection_answers_a_refusal_from_its_head_and_keeps_every_other_request_in_order(
        caplog: pytest.LogCaptureFixture) -> None:
    def scenario(port: int, app: RefusingApp) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            head, body = post("/refuse", b'{"big": "' + b"x" * 5000 + b'"}')
            sock.sendall(head)  # the body is not sent yet: the refusal comes from the head alone
            answer, text = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and text == REFUSAL
            assert b"\r\nretry-after: 1\r\n" in answer and b"\r\nserver: uvicorn\r\n" in answer
            assert b"\r\ndate: " in answer and b"connection: close" not in answer
            sock.sendall(body)  # discarded as it comes; the connection goes on
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
            after, text = read_answer(sock)
            assert after.startswith(b"HTTP/1.1 200") and text == b"app"
            assert app.reached == ["GET /after"]

            # pipelined in one read: one early answer a read, the rest in turn through the app, in order
            sock.sendall(b"".join((*post("/refuse"), *post("/refuse"), b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")))
            answers = [read_answer(sock) for _ in range(3)]
            assert [(a[:12], b) for a, b in answers] == [(b"HTTP/1.1 503", REFUSAL), (b"HTTP/1.1 503", b"app"),
                                                        (b"HTTP/1.1 200", b"app")]
            assert app.reached == ["GET /after", "POST /refuse", "GET /second"]

            # behind a request still running, a refusal waits its turn through the app: nothing jumps the queue
            sock.sendall(b"".join((b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n", *post("/refuse"))))
            held, after_held = read_answer(sock), read_answer(sock)
            assert held[0].startswith(b"HTTP/1.1 200") and after_held[1] == b"app"
            assert after_held[0].startswith(b"HTTP/1.1 503") and b"x-answered-by: app" in after_held[0]

            # Expect: 100-continue is the app's to answer (it decides whether the body comes)
            sock.sendall(post("/refuse", extra=b"Expect: 100-continue\r\n")[0])
            assert read_head(sock).startswith(b"HTTP/1.1 100 Continue")  # the app asked for the body
            sock.sendall(b"{}")
            answer, text = read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 503") and b"x-answered-by: app" in answer and text == b"app"

            # a chunked body is the app's too (its framing errors come after the head); the next request follows
            sock.sendall(b"POST /refuse HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                         b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
            chunked, third = read_answer(sock), read_answer(sock)
            assert chunked[0].startswith(b"HTTP/1.1 503") and chunked[1] == b"app" and third[1] == b"app"

            # a failing answer_early is logged and the app answers
            sock.sendall(b"".join(post("/boom")))
            boom, text = read_answer(sock)
            assert boom.startswith(b"HTTP/1.1 200") and text == b"app"
        assert app.reached[-6:] == ["GET /hold", "POST /refuse", "POST /refuse", "POST /refuse", "GET /third",
                                    "POST /boom"]

        reached = len(app.reached)
        for closing, version in ((b"Connection: close\r\n", b"1.1"), (b"", b"1.0")):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                sock.sendall(b"".join(post("/refuse", extra=closing, version=version)))
                answer, text = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 503") and b"\r\nconnection: close" in answer.lower()
                assert text == REFUSAL and sock.recv(1) == b""  # and the server closed it
        assert len(app.reached) == reached  # neither reached the app

        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:  # a coding the parser refuses
            sock.sendall(b"POST /refuse HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nxx")
            answers = read_until_closed(sock)
            assert answers.startswith(b"HTTP/1.1 400") and answers.count(b"HTTP/1.1 ") == 1, answers

    in_process(scenario)
    assert "answering a request from its head failed; the app answers it instead" in caplog.text
    assert "KeyError: 'a bug in answer_early'" in caplog.text


def test_a_flood_of_pipelined_refusals_is_answered_in_turn_not_all_at_once() -> None:
    """One read holding 200 refusals: one is answered early, the rest go through uvicorn's pipeline (which
    stops reading), so one client cannot hold the event loop for the whole read."""
    def scenario(port: int, app: RefusingApp) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"".join(b"".join(post("/refuse")) for _ in range(200)))
            answers = [read_answer(sock) for _ in range(200)]
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(sock)[1] == b"app"
        assert all(head.startswith(b"HTTP/1.1 503") for head, _ in answers)
        early = sum(1 for _, text in answers if text == REFUSAL)
        assert answers[0][1] == REFUSAL and early <= 10, early  # one a read (the kernel may split the 200)
        assert len(app.reached) == 200 - early + 1

    in_process(scenario)


def test_an_early_answer_leaves_its_body_to_come_and_then_the_connection_idles() -> None:
    """--header-timeout 1 s, keep-alive 0.5 s. A refusal answered from its head whose body then takes 1.5 s to
    come (at about 200 KB/s, well over --min-body-rate-kib) is not cut off by the next head's deadline: that
    starts when its body has come. After a small body, the idle connection closes quietly at keep-alive
    (the body's bytes are not taken for the start of a next head, which would earn a 408)."""
    def scenario(port: int, app: RefusingApp) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            head, body = post("/refuse", b"x" * 300_000)
            sock.sendall(head)
            assert read_answer(sock)[1] == REFUSAL
            for start in range(0, len(body), 20_000):
                sock.sendall(body[start:start + 20_000])
                time.sleep(0.1)
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
            after = read_answer(sock)
            assert after[0].startswith(b"HTTP/1.1 200") and after[1] == b"app", after
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"".join(post("/refuse", b"{}")))
            assert read_answer(sock)[1] == REFUSAL
            assert read_until_closed(sock) == b""  # quietly at keep-alive: no 408
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(sock)[1] == b"app"

    in_process(scenario, keep_alive=0.5, protocol=ImpatientProtocol)


def test_a_request_pipelined_behind_an_early_answer_outlives_the_keep_alive_timeout() -> None:
    """Keep-alive 0.5 s; a refusal answered early and, in the same read, a request the app holds 1.5 s: the
    connection is busy, not idle, and the held request gets its answer (uvicorn's keep-alive timer, armed by
    the early answer and cancelled only by the next read, used to close it)."""
    def scenario(port: int, app: RefusingApp) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"".join((*post("/refuse"), b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")))
            assert read_answer(sock)[1] == REFUSAL
            held = read_answer(sock)
            assert held[0].startswith(b"HTTP/1.1 200") and held[1] == b"app"

    in_process(scenario, keep_alive=0.5, hold_for=1.5)


class Spy:
    """Around the service's app, as uvicorn's own wrappers are: records every request that reaches the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.reached: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.reached.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@contextmanager
def served_in_process(tmp_path: Path) -> Iterator[tuple[int, Spy]]:
    """The real service (its app, connection protocol and worker process) under uvicorn in a thread of this
    process, behind a ``Spy``: --max-queue-wait 1 ms, bearer token ``s3cret``."""
    settings = Settings.build(ServeOptions(manifest=str(write_manifest(tmp_path, "behaviours.inference")),
                                           data_root=str(tmp_path / "data"), max_queue_wait=0.001,
                                           auth_token_env="MLC_TOKEN"), os.environ)
    metrics = Metrics()
    spy = Spy(create_app(Service(settings, sync_boxes=False, observer=metrics), metrics))
    config = uvicorn.Config(spy, host="127.0.0.1", port=0, http=GuardedHttpToolsProtocol, loop="asyncio",
                            lifespan="on", log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        poll(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started
        yield server.servers[0].sockets[0].getsockname()[1], spy
    finally:
        server.should_exit = True
        thread.join(60)


@contextmanager
def held_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Spy, Path, Callable[[], None]]]:
    """``served_in_process`` with one call held by a gate (so any other request is refused: its expected wait
    is over the budget); yields its URL, the spy, the calls log and the gate's release."""
    log = tmp_path / "calls.log"
    gates = [tmp_path / "gate0", tmp_path / "gate1"]
    monkeypatch.setenv("CALL_LOG", str(log))
    monkeypatch.setenv("MLC_TOKEN", "s3cret")
    with served_in_process(tmp_path) as (port, spy), ThreadPoolExecutor(2) as pool:
        url = f"http://127.0.0.1:{port}"
        infer = url + "/v2/models/test-model/infer"

        def gated(gate: Path) -> Any:
            return pool.submit(HTTP.post, infer, json=body("gate", path=str(gate)), headers=AUTH, timeout=120)

        first = gated(gates[0])  # a call that lasts at least one poll of its gate: the estimate is over 1 ms
        poll(lambda: len(calls_logged(log)) == 1, "the first gated call to run")
        gates[0].touch()
        assert first.result().status_code == 200
        held = gated(gates[1])
        poll(lambda: len(calls_logged(log)) == 2, "the held call to run")
        yield url, spy, log, gates[1].touch
        assert held.result().status_code == 200


def test_the_service_answers_a_refusal_early_as_its_app_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = httpx.Request("POST", "http://t", json=body("echo")).content
    infer = "/v2/models/test-model/infer"
    with held_service(tmp_path, monkeypatch) as (url, spy, log, release):
        port = int(url.rsplit(":", 1)[1])
        # the first refusal goes through the app; from then on (shedding load) the connection answers them
        assert HTTP.post(url + infer, json=body("echo"), headers=AUTH).status_code == 503
        reached = len(spy.reached)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            # early: from the head alone, the client's request id echoed
            head = post(infer, payload, b"Authorization: Bearer s3cret\r\nX-Request-ID: mine-1\r\n")
            sock.sendall(head[0])
            early, early_text = read_answer(sock)
            sock.sendall(head[1])
            assert len(spy.reached) == reached  # the app never saw it
            # early again, with a minted id
            sock.sendall(b"".join(post(infer, payload, b"Authorization: Bearer s3cret\r\n")))
            minted, _ = read_answer(sock)
            assert len(spy.reached) == reached
            # the app's way (Expect: 100-continue is never answered early): the same refusal
            sock.sendall(post(infer, payload, b"Authorization: Bearer s3cret\r\nExpect: 100-continue\r\n")[0])
            by_app, app_text = read_answer(sock)
            sock.sendall(payload)  # the app refused without asking for it; the parser still expects it
            assert spy.reached[reached:] == [f"POST {infer}"]
            # no token: 401 first, as the app says it
            sock.sendall(b"".join(post(infer, payload)))
            unauthorized, _ = read_answer(sock)
        assert early.startswith(b"HTTP/1.1 503") and by_app.startswith(b"HTTP/1.1 503"), (early, by_app)
        assert early_text == app_text and b"--max-queue-wait" in early_text
        assert b"\r\nx-request-id: mine-1" in early
        for answer in (minted, by_app):
            assert re.search(rb"\r\nx-request-id: [0-9a-f]+-[0-9a-f]+-[0-9a-f]+\b", answer)  # minted
        assert names(early) == names(minted) == names(by_app) == ["date", "server", "content-type", "retry-after",
                                                                "content-length", "x-request-id"]
        assert values(early, "retry-after") == values(by_app, "retry-after") == "1"
        assert unauthorized.startswith(b"HTTP/1.1 401")
        metrics = HTTP.get(url + "/metrics").text
        assert 'mlcomponent_refusals_total{reason="queue_wait"} 4.0' in metrics
        assert 'mlcomponent_requests_total{endpoint="infer",status="503",transport="http"} 4.0' in metrics
        release()
    assert len(log.read_text().splitlines()) == 2  # the refused never ran


def names(head: bytes) -> list[str]:
    return [line.split(b":")[0].decode().lower() for line in head.split(b"\r\n")[1:]]


def values(head: bytes, name: str) -> str:
    return next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(name.encode() + b":"))
