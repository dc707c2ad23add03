"""Admission by expected wait under a slow model: the fixed-cost model at 100 ms a call, batching
off and on, with a 5 s queue-wait budget, at 50, 200 and 1,000 connections.

    .venv/bin/python benchmarks/admission.py   # about 2 minutes; writes benchmarks/results/admission.md

Each connection sends one-row requests back to back (HTTP/1.1 keep-alive, a small asyncio
client on CPU 0; the server on CPU 1). A refused client waits the `Retry-After` it was
given before it sends again, as the header asks. The table counts served requests and
their latency (all should be within the budget plus one call), and refusals: how many,
how fast (the client's measure, from sending to the last byte), and whether each
carried `Retry-After` (after a wait shorter than the server's keep-alive, 5 s, the client
sends again on its connection, as a pooled client does; after a longer one it connects
again: the server has closed the idle connection). The load client's own measure of a refusal
includes its own delays (one Python loop with up to 1,000 connections on a shared
core), so two probes, separate processes, each send a request every 50 ms during each run,
each on its own connection and thread, and time the refusals. One shares the server's core
(CPU 1): it takes its CPU from the server, and it measures the server's latency. The other
shares the load generator's core (CPU 0), as the one probe before 2026-12-05 did (compare
history with that column): it also measures the load generator's own scheduling, when many
of its clients wake together. Slow refusals that both probes see at the same moment are the
server's. The probes stop half a second before the load does: when the load stops, its
~1,000 connections close at once, and a refusal among them waits for the server to see them
all go (up to ~60 ms at 1,000): that is the load generator's teardown, not the load.
The load generator and the probes run with Python's cyclic GC off during a run: a
collection in the generator held all its clients for up to 17 ms and then let them go
together (a wave independent clients would not make), and one in a probe was added to the
refusal it was timing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import run as bench

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}]})
BUDGET = 5.0
SERVER_KEEP_ALIVE = 5.0  # seconds: uvicorn's default, which serve keeps
COST = 0.1


@dataclass
class Tally:
    served: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    refused_with_retry_after: int = 0
    other: int = 0
    probed: dict[int, list[float]] = field(default_factory=dict)  # each probe's refusals (seconds), by its CPU


async def connection(port: int, path: str, stop: float, tally: Tally, reconnect: bool) -> None:
    """One client: requests back to back; after a refusal it waits its Retry-After, then sends again on its
    connection while the server still holds it (a wait under its keep-alive), as a pooled client (requests'
    ``Session``, httpx) does, else (or with ``reconnect``, the model before 2026-12-05 13:20) on a new one.
    A connection that fails is counted in ``other`` and replaced."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop:
            try:
                new_connection = await exchange(reader, writer, request, stop, tally, reconnect)
            except (OSError, asyncio.IncompleteReadError):
                tally.other += 1
                new_connection = True
            if new_connection and time.monotonic() < stop:  # no connection opened only to be closed
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, stop: float,
                   tally: Tally, reconnect: bool) -> bool:
    """One request and its answer (and a refusal's wait); whether the next needs a new connection."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    seconds = time.perf_counter() - started
    status = int(lines[0].split()[1])
    if status == 200:
        tally.served.append(seconds)
    elif status == 503:
        tally.refused.append(seconds)
        retry = headers.get("retry-after")
        if retry is not None:
            tally.refused_with_retry_after += 1
            await asyncio.sleep(min(float(retry), max(0.0, stop - time.monotonic())))
            return reconnect or float(retry) >= SERVER_KEEP_ALIVE or reader.at_eof()
    else:
        tally.other += 1
    return headers.get("connection") == "close"


async def load(port: int, path: str, connections: int, seconds: float, reconnect: bool = False) -> Tally:
    tally = Tally()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(connection(port, path, stop, tally, reconnect) for _ in range(connections)))
    return tally


PROBE_GAP = 0.05
CLIENT_CPU, SERVER_CPU = 0, 1  # run.py pins every server to CPU 1
PROBE_CPUS = (SERVER_CPU, CLIENT_CPU)
PROBE_TAIL = 0.5  # the probe stops this long before the load does: it measures the load, not its teardown


def probe(port: int, path: str, until: float, cpu: int) -> None:
    """The probe process, on ``cpu``: a request every 50 ms, each on its own connection and thread (one
    that is admitted waits its turn without holding up the next; none waits Retry-After: it measures, it
    adds next to no load); prints the seconds each refusal took, from sending to the answer read, as JSON."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    os.sched_setaffinity(0, {cpu})
    gc.disable()  # a collection here (up to 8 ms seen) would be added to the refusal being timed

    def one() -> float | None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.connect()
        started = time.perf_counter()
        connection.request("POST", path, BODY, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        connection.close()
        return time.perf_counter() - started if answer.status == 503 else None

    stop = until  # time.monotonic(): one clock for every process on Linux
    with ThreadPoolExecutor(256) as pool:
        sent = []
        while time.monotonic() < stop:
            sent.append(pool.submit(one))
            time.sleep(PROBE_GAP)
        refusals = [s for s in (f.result() for f in sent) if s is not None]
    print(orjson.dumps(refusals).decode())


async def measured(port: int, path: str, connections: int, seconds: float, reconnect: bool = False) -> Tally:
    """The load, with the probes beside it (started once the load has filled the queue)."""
    until = time.monotonic() + seconds - PROBE_TAIL

    async def probing(cpu: int) -> list[float]:
        await asyncio.sleep(min(2.0, seconds / 4))
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe", str(port), path, repr(until), str(cpu),
            stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        return list(orjson.loads(out))
    gc.disable()  # a collection in the load generator (up to 17 ms seen) holds all its clients, then lets
    try:  # them go together: a wave the server never had from independent clients
        tally, *refusals = await asyncio.gather(load(port, path, connections, seconds, reconnect),
                                                *(probing(cpu) for cpu in PROBE_CPUS))
    finally:
        gc.enable()
    tally.probed = dict(zip(PROBE_CPUS, refusals, strict=True))
    return tally


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(coroutine: Any) -> Any:
    """uvloop when it is installed (it is, with uvicorn's extras): the client's own loop lag stays small."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        probe(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return
    parser = bench.arguments(__doc__, "admission.md")
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--connections", default="50,200,1000")
    parser.add_argument("--reconnect", action="store_true",
                        help="a refused client connects anew after every Retry-After (the model before 2026-12-05)")
    parser.add_argument("--batching", choices=("off", "on", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs at each level, one row each, on the same server")
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})  # the client on CPU 0; the server is pinned to CPU 1
    levels = [int(c) for c in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mlc-admission-"))
    manifest = HERE / "models/fixed/mlcomponent.yaml"
    rows = []
    for mode, extra in (("off", ["--max-batch-size", "1"]), ("on", [])):
        if args.batching not in (mode, "both"):
            continue
        port = bench.free_port()
        server = bench.Server(f"batching {mode}", [sys.executable, "-m", "mlcomponent", "serve", str(manifest),
                                                   "--port", str(port), "--data-root", str(work / "data"),
                                                   "--log-level", "warning", "--max-queue-wait", str(BUDGET), *extra],
                              ROOT, path="/v2/models/fixed/infer", env={"FIXED_COST": str(COST)})
        with bench.running(server, port, work / f"{mode}.log"):
            run(load(port, server.path, 4, 2))  # the estimate learns the service time
            for connections in [level for level in levels for _ in range(args.repeat)]:
                tally = run(measured(port, server.path, connections, args.seconds, args.reconnect))
                rows.append((mode, connections, tally))
                print(f"   batching {mode} @{connections}: {len(tally.served)} served, {len(tally.refused)} refused",
                      file=sys.stderr)
    table = render(rows, args.seconds, args.reconnect)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def probed(refusals: list[float]) -> str:
    return f"{len(refusals)}, {percentile(refusals, 0.5) * 1000:.1f} / {percentile(refusals, 0.99) * 1000:.1f}"


def render(rows: list[tuple[str, int, Tally]], seconds: float, reconnect: bool = False) -> str:
    load = os.getloadavg()
    lines = [f"Machine: {bench.machine('an asyncio client')}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
             f"{load[2]:.1f}. Fixed-cost model, {COST * 1000:.0f} ms a call, --max-queue-wait {BUDGET:g}, "
             f"{seconds:g} s per run; a refused client "
             f"{'connects anew after every Retry-After (--reconnect)' if reconnect else 'reuses its connection'}.", "",
             "| batching | connections | served | served p50 / p99 / max s | over budget + 1 call | refused | "
             "refusal p50 / p99 ms | refusals with Retry-After | probe beside the server (CPU 1): refusals, p50 / p99 "
             "ms | probe beside the load generator (CPU 0): refusals, p50 / p99 ms | other errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, connections, tally in rows:
        served, refused = tally.served, tally.refused
        over = sum(1 for s in served if s > BUDGET + COST)
        lines.append(
            f"| {mode} | {connections:,} | {len(served):,} | {percentile(served, 0.5):.2f} / "
            f"{percentile(served, 0.99):.2f} / {max(served, default=float('nan')):.2f} | {over} | {len(refused):,} | "
            f"{percentile(refused, 0.5) * 1000:.1f} / {percentile(refused, 0.99) * 1000:.1f} | "
            f"{tally.refused_with_retry_after:,} of {len(refused):,} | {probed(tally.probed.get(SERVER_CPU, []))} | "
            f"{probed(tally.probed.get(CLIENT_CPU, []))} | {tally.other} |")
    if rows:
        lines += ["", f"Median served latency over all runs: {statistics.median(s for *_, t in rows for s in t.served):.2f} s"
                  if any(t.served for *_, t in rows) else ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
