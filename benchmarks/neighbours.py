"""What one client can do to the HTTP process's memory and to other clients (not timed tests: run by hand).

    .venv/bin/python benchmarks/neighbours.py json 1   # one 63 MB JSON body: the HTTP process's peak RSS
    .venv/bin/python benchmarks/neighbours.py json 3   # three at once (the memory budget refuses two)
    .venv/bin/python benchmarks/neighbours.py unread   # 8 clients ask a 30 MB answer and never read it
    .venv/bin/python benchmarks/neighbours.py header   # one header streamed for 12 s: probes' latency, RSS
    .venv/bin/python benchmarks/neighbours.py dribble  # 140 bodies at a byte a second, cap 128: new clients

Each prints one block of numbers; docs/serving.md ("Sharing a service") quotes them.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Server, serve, write_manifest  # noqa: E402

INFER = "/v2/models/test-model/infer"
MB = 1024 * 1024


def peak_and_now(pid: int) -> str:
    """The process's peak and current resident memory (VmHWM, VmRSS), MiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return f"peak {int(status['VmHWM'].split()[0]) // 1024} MiB, now {int(status['VmRSS'].split()[0]) // 1024} MiB"


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def served(work: Path, *args: str, open_files: int | None = None) -> AbstractContextManager[Server]:
    return serve(write_manifest(work, "neighbours.inference"), *args, data_root=work / "data",
                 open_files=open_files)


def json_bodies(work: Path, count: int) -> None:
    numbers = 63 * MB // 4
    body = (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[%d],"data":[' % numbers
            + b",".join([b"1.5"] * numbers) + b"]}]}")
    with served(work, "--no-limits") as server:
        def one(index: int) -> int:
            return httpx.post(server.url + INFER, content=body, headers={"content-type": "application/json"},
                              timeout=600).status_code

        with ThreadPoolExecutor(count) as pool:
            statuses = list(pool.map(one, range(count)))
        print(f"{count} x {len(body) / 1e6:.0f} MB JSON at once: {statuses}; HTTP process "
              f"{peak_and_now(server.process.pid)}")


def unread(work: Path) -> None:
    request = orjson.dumps({"inputs": [], "parameters": {"mb": 30}})
    with served(work, "--write-timeout", "5") as server:
        sockets = []
        for _ in range(8):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(address(server))
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % (INFER.encode(), len(request)) + request)
            sockets.append(sock)
        for seconds in (4, 12):
            time.sleep(seconds - (4 if seconds == 12 else 0))
            print(f"8 unread 30 MB answers, after {seconds} s (--write-timeout 5): {peak_and_now(server.process.pid)}")
        for sock in sockets:
            sock.close()


def header(work: Path) -> None:
    with served(work) as server:
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                httpx.get(server.url + "/v2/health/live", timeout=60)
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        sock = socket.create_connection(address(server))
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: b\r\nX-Long: ")
        end, sent = time.monotonic() + 12, 0
        try:
            while time.monotonic() < end:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError as error:
            print(f"the header's sender was cut off after {sent / 1e6:.1f} MB sent: {type(error).__name__}")
        time.sleep(max(0.0, end - time.monotonic()))
        stop.set()
        prober.join()
        latencies.sort()
        print(f"health probes while a header streams for 12 s: median {latencies[len(latencies) // 2]:.3f} s, "
              f"max {latencies[-1]:.3f} s; HTTP process {peak_and_now(server.process.pid)}")


def dribble(work: Path) -> None:
    with served(work, "--body-timeout", "60", open_files=256) as server:
        from tests.test_http_neighbours import Dribble, innocents

        attack = Dribble(address(server), 140)
        try:
            statuses = innocents(server, 85)
        finally:
            attack.close()
        print(f"140 bodies at a byte per round, cap 128: {statuses.count(200)} of 85 new clients served, "
              f"{attack.cut} slow connections closed by the server")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["json", "unread", "header", "dribble"])
    parser.add_argument("count", nargs="?", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlc-neighbours-"))
    try:
        if args.what == "json":
            json_bodies(work, args.count)
        else:
            {"unread": unread, "header": header, "dribble": dribble}[args.what](work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
