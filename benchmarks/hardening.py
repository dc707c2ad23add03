"""Soaks and measurements for the production limits (not timed tests: run them by hand).

    .venv/bin/python benchmarks/hardening.py soak        # 20,000 requests, 8 clients: errors and RSS growth
    .venv/bin/python benchmarks/hardening.py memory      # a module that keeps 100 MB per call under memory: 256M
    .venv/bin/python benchmarks/hardening.py slowloris   # 300 slow connections at 256 open files, with and without the cap

Each prints one block of numbers; docs/serving.md quotes them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import serve, write_manifest  # noqa: E402

INFER = "/v2/models/test-model/infer"
MB = 1024 * 1024


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def soak(work: Path, requests: int = 20_000, clients: int = 8) -> None:
    with serve(write_manifest(work, "behaviours.inference"), data_root=work / "data") as server:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}

        def hammer(count: int) -> list[int]:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                return [client.post(INFER, json=body).status_code for _ in range(count)]

        with ThreadPoolExecutor(clients) as pool:
            assert set(sum(pool.map(hammer, [250] * clients), [])) == {200}
            warmed = tree_rss(server.process.pid)
            started = time.perf_counter()
            statuses = sum(pool.map(hammer, [requests // clients] * clients), [])
            seconds = time.perf_counter() - started
        after = tree_rss(server.process.pid)
    errors = len([s for s in statuses if s != 200])
    print(f"soak: {len(statuses)} requests in {seconds:.1f} s ({len(statuses) / seconds:.0f}/s), {errors} errors, "
          f"RSS {warmed / MB:.1f} MB -> {after / MB:.1f} MB ({(after - warmed) / MB:+.1f} MB)")


def memory(work: Path, calls: int = 6) -> None:
    """A call that keeps 100 MB each time, under `memory: 256M`: which call fails, how fast it comes back."""
    with serve(write_manifest(work, "hostile.inference"), data_root=work / "data") as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for index in range(1, calls + 1):
                started = time.perf_counter()
                response = client.post(INFER, json={"inputs": [], "parameters": {"do": "hog", "mb": 100}})
                took = time.perf_counter() - started
                rss = tree_rss(server.process.pid)
                print(f"call {index}: {response.status_code} in {took * 1000:.0f} ms, service RSS now "
                      f"{rss / MB:.0f} MB: {response.text[:160]}")
            started = time.perf_counter()
            response = client.post(INFER, json={"inputs": [], "parameters": {"do": "hog_and_wait", "mb": 600}})
            print(f"a call that grows to 600 MB and never returns: {response.status_code} after "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms: {response.text[:160]}")


def slowloris(work: Path) -> None:
    from tests.test_slow_clients import BODY, Slowloris, address

    for label, args in (("no cap (uvicorn's behaviour)", ("--max-connections", "100000", "--header-timeout", "600")),
                        ("default cap", ())):
        folder = work / label.split()[0]
        with serve(write_manifest(folder, "echo.inference"), *args, data_root=folder / "data",
                   open_files=256) as server:
            def new_client(index: int, url: str = server.url) -> str:
                try:
                    with httpx.Client(base_url=url, timeout=30) as client:
                        return str(client.post(INFER, json=BODY).status_code)
                except httpx.HTTPError as error:
                    return type(error).__name__

            with Slowloris(address(server), 300):
                with ThreadPoolExecutor(4) as pool:
                    results = list(pool.map(new_client, range(63)))
            print(f"slowloris, {label}: {results.count('200')} of 63 new clients served "
                  f"(others: {sorted(set(results) - {'200'})})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["soak", "memory", "slowloris"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlc-hardening-"))
    try:
        {"soak": soak, "memory": memory, "slowloris": slowloris}[args.what](work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
