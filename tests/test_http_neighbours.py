"""No client can hurt another through the HTTP process: each test runs an attacker and innocent
clients at the same time against a real served module (uvicorn on loopback), and asserts both the
attacker's answer and that every innocent request succeeds. Gates and the server's own log decide
the order, never a clock."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from mlcomponent.http.connections import BODY_GRACE
from tests.conftest import S3_ENV, S3Endpoint
from tests.support import HTTP, Server, free_port, serve, stop_group, wait_until_live, write_manifest

MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"
SMALL = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}]}
MB = 1024 * 1024


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def innocents(server: Server, count: int = 24) -> list[int]:
    """``count`` ordinary clients, each on its own connection: small calls and health probes."""
    def one(index: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            if index % 3 == 0:
                return client.get("/v2/health/ready").status_code
            return client.post(INFER, json=SMALL).status_code

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def wait_for_log(server: Server, text: str, deadline_s: float = 60) -> None:
    """The server says it acted (its log is the gate), within a generous bound."""
    deadline = time.monotonic() + deadline_s
    while text not in server.output():
        assert time.monotonic() < deadline, f"the log never said {text!r}:\n{server.output()[-3000:]}"
        time.sleep(0.02)


def read_reply(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return received
        if not chunk:
            return received
        received += chunk


def head(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: attacker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


# --------------------------------------------------------------------------- headers (431)

@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("neighbours-plain")
    with serve(write_manifest(folder, "neighbours.inference"), "--memory-budget-mb", "64", "--write-timeout", "1",
               data_root=folder / "data") as server:
        yield server


def test_a_header_streamed_without_end_gets_431_while_others_are_served(plain: Server) -> None:
    """A header value sent 4 KiB at a time, forever: 431 once the head passes 64 KiB, and meanwhile
    (and after) every other client is served. Before, httptools grew the value on the event loop
    without a bound (a 10 MB header was answered 200)."""
    sock = socket.create_connection(address(plain), timeout=60)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: attacker\r\nX-Long: ")
    results: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(innocents, plain)
        sent = 0
        while not select.select([sock], [], [], 0)[0] and sent < 64 * MB:
            try:
                sock.sendall(b"a" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 4096
        reply = read_reply(sock)
        results = served.result()
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"--max-header-kib" in reply
    assert results == [200] * len(results)
    assert innocents(plain, 6) == [200] * 6


@pytest.mark.parametrize("count", [1_000, 10_000])
def test_too_many_headers_get_431(plain: Server, count: int) -> None:
    """1,000 short headers (12 KB) pass the size limit but not the count; 10,000 pass neither."""
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(count))
    with socket.create_connection(address(plain), timeout=60) as sock:
        sock.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: attacker\r\n{many}\r\n".encode())
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"--max-headers" in reply or (count == 10_000 and b"--max-header-kib" in reply)
    assert innocents(plain, 6) == [200] * 6


def test_an_ordinary_request_with_many_small_headers_is_served(plain: Server) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(90)}
    assert HTTP.post(plain.url + INFER, json=SMALL, headers=headers, timeout=60).status_code == 200


# --------------------------------------------------------------------------- the memory budget

def large_body(size: int) -> bytes:
    """Valid JSON of about ``size`` bytes: one call whose body counts as large against the budget."""
    count = size // 2
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [count], "data": [1] * count}]})


def test_a_body_held_half_sent_makes_large_requests_wait_and_small_ones_pass(plain: Server) -> None:
    """The attacker declares 20 MB of JSON (320 MiB to decode, over the 64 MiB budget: let through
    alone) and stops after 1 KB. Another large request gets 503 + Retry-After, small ones 200; once the
    attacker goes, the large request is served."""
    attacker = socket.create_connection(address(plain), timeout=60)
    attacker.sendall(head(INFER, 20 * MB) + b'{"inputs": [' + b" " * 1000)
    big = large_body(200_000)
    with httpx.Client(base_url=plain.url, timeout=60) as client:
        deadline = time.monotonic() + 60
        while True:  # until the server holds the attacker's share (it has begun to read its body)
            refused = client.post(INFER, content=big, headers={"content-type": "application/json"})
            if refused.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert refused.status_code == 503, refused.text[:300]
        assert refused.headers["retry-after"] == "1"
        assert "--memory-budget-mb" in refused.json()["error"]
        assert innocents(plain) == [200] * 24
        attacker.close()
        deadline = time.monotonic() + 60
        while (answer := client.post(INFER, content=big, headers={"content-type": "application/json"})
               ).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server has not yet seen the attacker go
        assert answer.status_code == 200, answer.text[:300]


def test_clients_that_never_read_a_30_mb_answer_are_cut_off_by_the_write_timeout(plain: Server) -> None:
    """8 clients ask for a 30 MB answer and read nothing (a tiny receive buffer, so the kernel holds
    little of it): each connection is closed after --write-timeout (1 s here) with its answer cut short,
    and the innocent clients meanwhile are all served."""
    request = orjson.dumps({"inputs": [], "parameters": {"mb": 30}})
    attackers = []
    for _ in range(8):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(60)
        sock.connect(address(plain))
        sock.sendall(head(INFER, len(request)) + request)
        attackers.append(sock)
    assert innocents(plain) == [200] * 24
    wait_for_log(plain, "(--write-timeout)")
    got = []
    for sock in attackers:
        got.append(len(read_reply(sock)))
        sock.close()
    assert all(size < 30 * MB for size in got), got
    assert innocents(plain, 6) == [200] * 6


# --------------------------------------------------------------------------- slow bodies

@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """256 open files: a cap of 128 connections. The body deadline is long (60 s): only the cap acts."""
    folder = tmp_path_factory.mktemp("neighbours-crowded")
    with serve(write_manifest(folder, "neighbours.inference"), "--body-timeout", "60", data_root=folder / "data",
               open_files=256) as server:
        yield server


class Dribble:
    """``count`` connections that send their headers, then one body byte each per round, until stopped.

    Each asks ``Expect: 100-continue``: the server's ``100 Continue`` says it has begun to read the body,
    and a second after the last one every body is past the cap's grace (BODY_GRACE)."""

    def __init__(self, target: tuple[str, int], count: int) -> None:
        self.sockets = [socket.create_connection(target, timeout=30) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(head(INFER, 50_000, "Expect: 100-continue\r\n"))  # small: under the memory budget
        self.cut = 0
        for sock in list(self.sockets):
            try:
                reading = sock.recv(25).startswith(b"HTTP/1.1 100")
            except OSError:
                reading = False
            if not reading:  # past the cap already (evicted, or 503): the server is done with it
                self.sockets.remove(sock)
                sock.close()
                self.cut += 1
        assert len(self.sockets) >= count // 2
        time.sleep(BODY_GRACE + 0.1)  # not a race: each body has been read for longer than this by then
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            for sock in list(self.sockets):
                try:
                    sock.sendall(b" ")
                except OSError:
                    self.sockets.remove(sock)
                    self.cut += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()


def test_slow_bodies_past_the_cap_are_evicted_and_new_clients_served(crowded: Server) -> None:
    """140 connections dribbling a body (one byte per round) at a cap of 128: the newcomers evict the
    slowest bodies (before, the cap closed only connections still in their headers, and 0 of 85 new
    clients were served for 45 s)."""
    dribble = Dribble(address(crowded), 140)
    try:
        before = dribble.cut
        assert innocents(crowded, 60) == [200] * 60
        wait_for_log(crowded, "closed the slowest connection (in its request body)")
        deadline = time.monotonic() + 60
        while dribble.cut == before:  # the attacker's next byte finds its connection gone
            assert time.monotonic() < deadline, "no slow body was evicted"
            time.sleep(0.02)
    finally:
        dribble.close()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("neighbours-strict")
    with serve(write_manifest(folder, "neighbours.inference"), "--body-timeout", "1", "--min-body-rate-kib", "0.1",
               data_root=folder / "data") as server:
        yield server


def test_a_byte_now_and_then_does_not_keep_a_body_open(strict: Server) -> None:
    """One byte every 50 ms (20 bytes/s, under --min-body-rate-kib 0.1, about 100 bytes/s) never stops arriving, yet the
    connection is closed after a --body-timeout window; before, each byte restarted the deadline."""
    with socket.create_connection(address(strict), timeout=60) as sock:
        sock.sendall(head(INFER, 100_000) + b"{")
        with ThreadPoolExecutor(1) as pool:
            served = pool.submit(innocents, strict)
            deadline = time.monotonic() + 60
            closed = False
            while not closed and time.monotonic() < deadline:
                if select.select([sock], [], [], 0.05)[0]:
                    closed = True
                    break
                try:
                    sock.sendall(b" ")
                except OSError:
                    closed = True
            assert served.result() == [200] * 24
    assert closed
    wait_for_log(strict, "under 0.1 (--min-body-rate-kib)")


# --------------------------------------------------------------------------- a slow disk (event loop)

SLOW_DISK = '''
import os, time
GATE = os.environ.get("SLOW_DISK_GATE")
if GATE:  # the "disk" under uploads: a write waits until the test creates the gate file
    from mlcomponent.http import multipart

    _write = multipart._Reader.on_part_data

    def on_part_data(self, data, start, end):
        if self.sink is not None and not os.path.exists(GATE):
            open(GATE + ".reached", "w").close()
            while not os.path.exists(GATE):
                time.sleep(0.01)
        _write(self, data, start, end)

    multipart._Reader.on_part_data = on_part_data
'''


def test_an_upload_to_a_slow_disk_does_not_stall_other_clients(tmp_path: Path) -> None:
    """The upload's writes block (on a gate the test holds) as a slow disk's would: health probes and
    other calls are still answered, and the upload completes once the disk moves. Before, parts were
    written inside the parser callback on the event loop: the probe hung with the upload."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_DISK)
    gate = tmp_path / "disk-moves"
    env = {"SLOW_DISK_GATE": str(gate), "PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                                                   os.environ.get("PYTHONPATH")]))}
    with serve(write_manifest(tmp_path, "files_echo.inference"), data_root=tmp_path / "data", env=env) as server:
        content = os.urandom(3 * MB)
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(lambda: HTTP.post(server.url + INFER, files={"doc": ("a.bin", content)},
                                                    data={"request": '{"outputs": [{"name": "size"}]}'},
                                                    timeout=120))
            reached = Path(str(gate) + ".reached")
            deadline = time.monotonic() + 60
            while not reached.exists():
                assert time.monotonic() < deadline and not upload.done(), "the upload never reached the disk"
                time.sleep(0.02)
            for _ in range(5):  # the disk is stuck now; the event loop must not be
                assert HTTP.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
                assert HTTP.get(server.url + f"/v2/models/{MODEL}", timeout=10).status_code == 200
            assert not upload.done()
            gate.touch()
            answer = upload.result()
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["outputs"][0]["data"] == [len(content)]


# --------------------------------------------------------------------------- safe downloads

def test_a_client_chosen_html_output_is_downloaded_as_an_attachment_with_nosniff(tmp_path: Path) -> None:
    inbox = tmp_path / "data" / "boxes" / "users" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "page.txt").write_text("<script>alert(1)</script>")
    with serve(write_manifest(tmp_path, "files_echo.inference"), data_root=tmp_path / "data") as server:
        def download(kind: str) -> httpx.Response:
            answer = HTTP.post(server.url + INFER, timeout=60, json={
                "inputs": [{"name": "doc", "datatype": "FILE", "shape": [1], "data": "inbox/page.txt"}],
                "outputs": [{"name": "copy", "parameters": {"datatype": "FILE", "content_type": kind}}]})
            assert answer.status_code == 200, answer.text[:300]
            key = answer.json()["outputs"][0]["data"][0]
            return HTTP.get(f"{server.url}/v2/models/{MODEL}/files/{key}", timeout=60)

        page, text = download("text/html"), download("text/plain")
    assert page.status_code == 200 and page.content == b"<script>alert(1)</script>"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["content-disposition"].startswith("attachment;")
    assert text.status_code == 200 and text.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in text.headers


# --------------------------------------------------------------------------- a full disk, S3 down

FILE_SIZE_LIMIT = '''
import os, resource
if os.environ.get("FILE_SIZE_LIMIT"):  # no tmpfs to fill (not root): the same failure, as EFBIG
    limit = int(os.environ["FILE_SIZE_LIMIT"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
'''


@contextmanager
def small_disk(folder: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A 5 MB tmpfs under ``folder`` (root), else a 5 MB file-size limit on the server's processes."""
    disk = folder / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)],
                                                    capture_output=True).returncode == 0
    site = folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FILE_SIZE_LIMIT)
    env = {} if mounted else {"FILE_SIZE_LIMIT": str(5 * MB), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    try:
        yield disk, env
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_507_naming_no_path_and_other_clients_are_served(tmp_path: Path) -> None:
    """A 20 MB upload onto a 5 MB disk: 507 (before: a 400 "malformed multipart body" or a 500 naming two
    server paths); health probes meanwhile, and a small upload after, are served."""
    with small_disk(tmp_path) as (disk, env), serve(write_manifest(tmp_path, "files_echo.inference"),
                                                    data_root=disk / "data", env=env) as server:
        with ThreadPoolExecutor(1) as pool:
            attack = pool.submit(lambda: HTTP.post(server.url + INFER, files={"doc": ("big.bin", b"\0" * 20 * MB)},
                                                    timeout=120))
            probes = [HTTP.get(server.url + "/v2/health/ready", timeout=60).status_code for _ in range(10)]
            full = attack.result()
        small = HTTP.post(server.url + INFER, files={"doc": ("a.txt", b"hello")}, timeout=60)
        paths = [str(disk), str(tmp_path), "/tmp/"]
    assert full.status_code == 507, full.text[:300]
    assert "disk space" in full.json()["error"]
    assert not any(path in full.text for path in paths), full.text
    assert probes == [200] * 10
    assert small.status_code == 200, small.text[:300]


def test_s3_down_is_503_naming_neither_endpoint_nor_bucket(tmp_path: Path) -> None:
    """The file box's S3 stops: a call that needs it gets 503 + Retry-After naming the box, not the endpoint,
    bucket or keys' location (before: a 500 with the endpoint URL, bucket and keys); others are served."""
    port = free_port()
    with (tmp_path / "moto.log").open("wb") as sink:
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **S3_ENV})
    try:
        endpoint = S3Endpoint(f"http://127.0.0.1:{port}")
        wait_until_live(endpoint.url, moto, tmp_path / "moto.log", path="/moto-api/")
        endpoint.bucket("hidden-bucket-7")
        endpoint.client.put_object(Bucket="hidden-bucket-7", Key="inbox/note.txt", Body=b"a note")
        boxes = tmp_path / "boxes.yaml"
        boxes.write_text(f"boxes:\n  users:\n    s3:\n      endpoint: {endpoint.url}\n      region: us-east-1\n"
                         "      bucket: hidden-bucket-7\n      accessKeyEnv: BOX_KEY\n      secretKeyEnv: BOX_SECRET\n")
        request = {"inputs": [{"name": "doc", "datatype": "FILE", "shape": [1], "data": "inbox/note.txt"}],
                   "outputs": [{"name": "size"}]}
        with serve(write_manifest(tmp_path, "files_echo.inference"), "--boxes", str(boxes),
                   data_root=tmp_path / "data", env=endpoint.server_env) as server:
            assert HTTP.post(server.url + INFER, json=request, timeout=60).status_code == 200
            stop_group(moto)
            with ThreadPoolExecutor(1) as pool:
                attack = pool.submit(lambda: HTTP.post(server.url + INFER, json=request, timeout=120))
                probes = [HTTP.get(server.url + "/v2/health/ready", timeout=60).status_code for _ in range(10)]
                down = attack.result()
    finally:
        stop_group(moto)
    assert down.status_code == 503, down.text[:300]
    assert down.headers["retry-after"] == "5"
    message = down.json()["error"]
    assert "'users'" in message and "retry" in message
    for secret in (str(port), "hidden-bucket-7", "127.0.0.1", "http"):
        assert secret not in message, message
    assert probes == [200] * 10
    # an outage is the operator's to see: logged (only admission's refusals are just counted)
    assert len([line for line in server.output().splitlines() if "-> 503" in line]) == 1, server.output()[-2000:]
