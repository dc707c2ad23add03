"""Serve the same trivial model with mlcomponent and its peers, load each the same way, print a table.

(Adaptive batching: benchmarks/batching.py. Large tensors: benchmarks/large.py.)

    .venv/bin/python benchmarks/run.py   # about 6 minutes on 2 cores (+ the peers' install, once)

At 1, 8, 64, 256 and 1,000 connections; errors counts every answer that is not 2xx (a 503
refusal too) and every socket error, per level, with wrk's timeout at 10 s (its default of
2 s counts slow answers at 1,000 connections as errors; p99 shows how slow they are). (Admission under a slow model:
benchmarks/admission.py.)

The first run installs the peers (benchmarks/setup-peers.sh: MLServer and KServe in
their own venvs, and wrk).

Each server is pinned to CPU 1 and wrk to CPU 0 (taskset), so the generator and the
server never share a core. Only ratios from one run mean anything: the machine's
speed moves ±30% with load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from tests.support import stop_group  # noqa: E402 - the tests' way to stop a server's process group

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1.0, 2.0, 3.0, 4.0]}]}
MB = 1024 * 1024
EXTRA = os.environ.get("MLC_BENCH_ARGS", "").split()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    command: list[str]
    cwd: Path
    path: str = "/v2/models/double/infer"
    ready_path: str = "/v2/health/ready"
    env: dict[str, str] = field(default_factory=dict)


def mlserver_folder(work: Path, peer: str, port: int) -> Path:
    """A copy of ``peers/<peer>`` with MLServer's fastest settings: parallel workers, debug, metrics, gzip off."""
    folder = work / peer
    shutil.copytree(HERE / "peers" / peer, folder, dirs_exist_ok=True)
    (folder / "settings.json").write_text(orjson.dumps({
        "http_port": port, "grpc_port": free_port(), "parallel_workers": 0, "debug": False,
        "metrics_endpoint": None, "gzip_enabled": False}).decode())
    return folder


def arguments(doc: str | None, out: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as help, ``--out`` (default ``results/<out>``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results" / out)
    return parser


def servers(port: int, work: Path) -> dict[str, Server]:
    python = sys.executable
    mlserver_dir = mlserver_folder(work, "mlserver", port)
    return {
        "mlcomponent": Server("mlcomponent", [python, "-m", "mlcomponent", "serve",
                                              str(HERE / "models/double/mlcomponent.yaml"), "--port", str(port),
                                              "--data-root", str(work / "mlc-data"), "--log-level", "warning", *EXTRA], ROOT),
        "inprocess": Server("mlcomponent --no-isolate", [python, "-m", "mlcomponent", "serve",
                                                         str(HERE / "models/double/mlcomponent.yaml"), "--port",
                                                         str(port), "--data-root", str(work / "mlc-data-inprocess"),
                                                         "--log-level", "warning", "--no-isolate", *EXTRA], ROOT),
        "mlserver": Server("MLServer 1.7 (parallel workers off)",
                           [str(HERE / ".venv-mlserver/bin/mlserver"), "start", str(mlserver_dir)], mlserver_dir),
        "kserve": Server("KServe 0.21 ModelServer",
                         [str(HERE / ".venv-kserve/bin/python"), str(HERE / "peers/kserve_double.py"), str(port)], HERE),
        "bare": Server("bare uvicorn (ceiling)",
                       [python, "-m", "uvicorn", "bare:app", "--port", str(port), "--log-level", "warning",
                        "--no-access-log", "--loop", "uvloop", "--http", "httptools"], HERE / "peers"),
    }


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


@contextmanager
def pinned(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server on CPU 1 (the load generator gets CPU 0), its process group stopped afterwards."""
    with log.open("wb") as sink:
        process = subprocess.Popen(["taskset", "-c", "1", *command], cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


@contextmanager
def running(server: Server, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with pinned(server.command, server.cwd, server.env, log) as process:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{server.ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process


def wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    output = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                             "--latency",
                             "-s", str(script), url], capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = int(errors.group(1)) if errors else 0
    sockets = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": non_2xx + sockets, "non_2xx": non_2xx,
            "socket_errors": sockets, "requests": requests}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process and its children have used so far."""
    try:
        root = psutil.Process(pid)
        return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0.0


def wrk_with_cpu(url: str, connections: int, seconds: int, script: Path, pid: int) -> dict[str, float]:
    """``wrk``, plus the server's CPU µs per request: on a shared machine, a measure that its load
    inflates far less than requests per second (which count the time the server waited for a core)."""
    before = tree_cpu(pid)
    row = wrk(url, connections, seconds, script)
    row["cpu_us"] = (tree_cpu(pid) - before) * 1e6 / max(1, row["requests"])
    return row


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def file_round_trip(port: int, size: int = 10 * MB, repeat: int = 5) -> float:
    """Median seconds: upload a file (multipart), copy it to a FILE output, download it."""
    payload = os.urandom(size)
    url = f"http://127.0.0.1:{port}/v2/models/double/infer"
    request = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "copy"}]}'
    timings = []
    with httpx.Client(timeout=120) as client:
        for _ in range(repeat + 1):
            started = time.perf_counter()
            answer = client.post(url, data={"request": request},
                                 files={"doc": ("blob.bin", payload, "application/octet-stream")})
            answer.raise_for_status()
            got = client.get(answer.json()["outputs"][0]["parameters"]["url"]).content
            timings.append(time.perf_counter() - started)
            assert got == payload, "the FILE round trip changed the bytes"
    return statistics.median(timings[1:])


def main() -> None:
    parser = arguments(__doc__, "latest.md")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per concurrency")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", default="1,8,64,256,1000")
    parser.add_argument("--only", default="mlcomponent,inprocess,mlserver,kserve,bare")
    args = parser.parse_args()
    # This harness polls every server's process tree (psutil) while it runs: on CPU 0, beside the load
    # generator, so that CPU 1 is the servers' alone (unpinned, it preempted them there).
    os.sched_setaffinity(0, {0})
    peers_missing = not (HERE / ".venv-mlserver/bin/mlserver").exists() or not (HERE / ".venv-kserve/bin/python").exists()
    if peers_missing or not shutil.which("wrk"):
        print("installing the peers and wrk (benchmarks/setup-peers.sh) ...", file=sys.stderr)
        subprocess.run([str(HERE / "setup-peers.sh")], check=True)
    if not shutil.which("wrk") or not shutil.which("taskset"):
        sys.exit("benchmarks need wrk and taskset: run benchmarks/setup-peers.sh")
    levels = [int(c) for c in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mlc-bench-"))
    script = work / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = \'{orjson.dumps(BODY).decode()}\'\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    results: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        started: dict[str, tuple[str, int, int, PeakRss]] = {}
        for key in args.only.split(","):  # every server up at once, idle until its turn
            port = free_port()
            server = servers(port, work)[key]
            if not Path(server.command[0]).exists() and not shutil.which(server.command[0]):
                print(f"skipping {server.name}: not installed (benchmarks/setup-peers.sh)", file=sys.stderr)
                continue
            process = stack.enter_context(running(server, port, work / f"{key}.log"))
            url = f"http://127.0.0.1:{port}{server.path}"
            check = httpx.post(url, json=BODY, timeout=10)
            assert check.status_code == 200 and check.json()["outputs"][0]["data"] == [2, 4, 6, 8], check.text
            wrk(url, 8, args.warmup, script)
            results[key] = {"idle_rss": tree_rss(process.pid)}
            started[key] = (url, port, process.pid, stack.enter_context(PeakRss(process.pid)))
        for connections in levels:  # side by side: the servers take turns at each concurrency
            for key, (url, _, pid, _) in started.items():
                results[key][connections] = wrk_with_cpu(url, connections, args.seconds, script, pid)
                print(f"   {key} @{connections}: {results[key][connections]}", file=sys.stderr)
        for key, (_, port, _, peak) in started.items():
            results[key]["loaded_rss"] = peak.peak
            if key == "mlcomponent":
                results[key]["file"] = file_round_trip(port)
    table = render(results, levels)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def machine(client: str = "wrk") -> str:
    cpu = (Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(" :\t")
           if Path("/proc/cpuinfo").exists() else "unknown CPU")
    return f"{os.cpu_count()} cores, {cpu}; server on CPU 1, {client} on CPU 0; {time.strftime('%Y-%m-%d %H:%M')}"


def rate_cells(row: dict[Any, Any], levels: list[int]) -> str:
    """req/s, p50/p99 and errors (non-2xx answers and socket errors) cells of one server's row, per level."""
    runs = [row[level] for level in levels]
    return (" | ".join(f"{r['rps']:,.0f}" for r in runs) + " | "
            + " | ".join(f"{r['p50']:.2f} / {r['p99']:.2f}" for r in runs) + " | "
            + " | ".join(f"{int(r['errors']):,}" for r in runs))


def ratio_rows(results: dict[str, dict[Any, Any]], levels: list[int], label: str, bare: str) -> list[str]:
    """mlcomponent's throughput over the better peer's and over the bare server's, per level."""
    mine = results["mlcomponent"]
    peers = [results[k] for k in ("mlserver", "kserve") if k in results]
    lines = ["", "| ratio | " + " | ".join(f"@{c}" for c in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    if peers:
        lines.append(f"| {label} / best of MLServer, KServe | " + " | ".join(
            f"{mine[c]['rps'] / max(p[c]['rps'] for p in peers):.2f}×" for c in levels) + " |")
    if "bare" in results:
        lines.append(f"| {label} / {bare} | " + " | ".join(
            f"{mine[c]['rps'] / results['bare'][c]['rps']:.0%}" for c in levels) + " |")
    return lines


def render(results: dict[str, dict[str, object]], levels: list[int]) -> str:
    names = {"mlcomponent": "mlcomponent (defaults)", "inprocess": "mlcomponent --no-isolate (the hop's cost)",
             "mlserver": "MLServer 1.7.1, parallel workers off",
             "kserve": "KServe 0.21 ModelServer", "bare": "bare uvicorn (ceiling)"}
    load = os.getloadavg()
    lines = [f"Machine: {machine()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}", "",
             "| server | " + " | ".join(f"req/s @{c}" for c in levels) + " | " +
             " | ".join(f"p50/p99 ms @{c}" for c in levels) + " | " +
             " | ".join(f"errors @{c}" for c in levels) + " | idle RSS | loaded RSS |",
             "|---" * (3 * len(levels) + 3) + "|"]
    for key, row in results.items():
        lines.append(f"| {names[key]} | {rate_cells(row, levels)} | {int(row['idle_rss']) / MB:.0f} MB | "  # type: ignore[call-overload]
                     f"{int(row['loaded_rss']) / MB:.0f} MB |")  # type: ignore[call-overload]
    if "mlcomponent" in results:
        mine = results["mlcomponent"]
        lines += ratio_rows(results, levels, "mlcomponent", "bare uvicorn")
        lines += ["", "| server CPU µs per request (user + system, whole process tree) | " +
                  " | ".join(f"@{c}" for c in levels) + " |", "|---" * (len(levels) + 1) + "|"]
        for key, row in results.items():
            lines.append(f"| {names[key]} | " + " | ".join(
                f"{row[c]['cpu_us']:.0f}" for c in levels) + " |")  # type: ignore[index]
        if "bare" in results:
            lines.append("| mlcomponent's share of the ceiling by CPU (bare's µs / ours) | " + " | ".join(
                f"{results['bare'][c]['cpu_us'] / mine[c]['cpu_us']:.0%}" for c in levels) + " |")  # type: ignore[index]
        peers = [results[k] for k in ("mlserver", "kserve") if k in results]
        if peers:
            lines.append("| mlcomponent against the best peer by CPU (peer's µs / ours) | " + " | ".join(
                f"{min(p[c]['cpu_us'] for p in peers) / mine[c]['cpu_us']:.2f}×" for c in levels) + " |")  # type: ignore[index]
        if "inprocess" in results:
            lines.append("| the isolated worker's hop (defaults − `--no-isolate`), µs | " + " | ".join(
                f"{mine[c]['cpu_us'] - results['inprocess'][c]['cpu_us']:.0f}" for c in levels) + " |")  # type: ignore[index]
        lines += ["", "| median of 5 (large tensors: benchmarks/large.py) | seconds |", "|---|---|",
                  f"| mlcomponent, 10 MB FILE in (multipart) + out (download), local box | {mine['file']:.3f} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
