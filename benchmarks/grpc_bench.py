"""gRPC: mlcomponent against MLServer's and KServe's gRPC servers on the same doubling model.

    .venv/bin/python benchmarks/grpc_bench.py   # about 4 minutes on 2 cores (+ the peers' install, once)

The load generator is h2load (nghttp2's, in C): one HTTP/2 connection carrying 1, 8 and 64
concurrent streams of the protocol's ``ModelInfer`` (typed ``fp32_contents``, which every server
here reads). It is measured first against the bare grpcio servicer (benchmarks/peers/bare_grpc.py,
the ceiling for a Python gRPC server): the table gives the share of its core h2load used, which
says how far it is from being the bottleneck.

h2load counts HTTP/2 answers, and a gRPC error is an HTTP 200 too, so every run is checked: the
data bytes received must be exactly (answers × the size of the one correct answer, taken from a
real client's call first). Our REST (wrk, as benchmarks/run.py drives it) is measured in the same
run for the comparison. Servers on CPU 1, generator on CPU 0. All servers run at once and are
measured in turn, in interleaved rounds (median round), so that whatever else loads the machine
falls on each alike; still, only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import psutil
from open_inference.grpc.protocol import ModelInferRequest, ModelInferResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BODY, HERE, MB, ROOT, PeakRss, free_port, pinned, rate_cells, ratio_rows, tree_cpu, tree_rss, wrk  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class GrpcServer:
    name: str
    command: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


def request() -> ModelInferRequest:
    message = ModelInferRequest(model_name="double")
    message.inputs.add(name="x", datatype="FP32", shape=[4]).contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    message.outputs.add(name="y")
    return message


def servers(http: int, port: int, work: Path) -> dict[str, GrpcServer]:
    python = sys.executable
    mlserver_dir = work / "mlserver"
    shutil.copytree(HERE / "peers" / "mlserver", mlserver_dir, dirs_exist_ok=True)
    (mlserver_dir / "settings.json").write_text(orjson.dumps({
        "http_port": http, "grpc_port": port, "parallel_workers": 0, "debug": False, "metrics_endpoint": None,
        "gzip_enabled": False}).decode())
    return {
        "bare": GrpcServer("bare grpcio asyncio servicer (ceiling)", [python, "peers/bare_grpc.py", str(port)], HERE),
        "mlcomponent": GrpcServer("mlcomponent (defaults)", [
            python, "-m", "mlcomponent", "serve", str(HERE / "models/double/mlcomponent.yaml"), "--port", str(http),
            "--grpc-port", str(port), "--data-root", str(work / "mlc-data"), "--log-level", "warning"], ROOT),
        "mlserver": GrpcServer("MLServer 1.7.1, parallel workers off",
                               [str(HERE / ".venv-mlserver/bin/mlserver"), "start", str(mlserver_dir)], mlserver_dir),
        "kserve": GrpcServer("KServe 0.21 ModelServer",
                             [str(HERE / ".venv-kserve/bin/python"), str(HERE / "peers/kserve_double.py"), str(http),
                              str(port)], HERE),
    }


def answer_size(port: int, deadline_s: float = 120) -> int:
    """Wait until the server answers ModelInfer correctly; the size of that answer's gRPC frame."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                infer = channel.unary_unary(METHOD, request_serializer=ModelInferRequest.SerializeToString,
                                            response_deserializer=ModelInferResponse.FromString)
                answer = infer(request(), timeout=5)
            values = list(answer.outputs[0].contents.fp32_contents)
            assert values == [2.0, 4.0, 6.0, 8.0], answer
            return 5 + answer.ByteSize()
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def h2load(port: int, streams: int, seconds: int, body: Path, size: int, log: Path,
           server_pid: int | None = None) -> dict[str, Any]:
    """One run: requests/s, each request's ms (h2load's per-request log), errors, the generator's CPU share,
    and the server's CPU µs per answer (its whole process tree: what the machine's load distorts least)."""
    server_cpu = tree_cpu(server_pid) if server_pid is not None else 0.0
    command = ["taskset", "-c", "0", "h2load", "-c", "1", "-t", "1", "-m", str(streams), "-D", str(seconds),
               "-d", str(body), "--log-file", str(log),
               "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://127.0.0.1:{port}{METHOD}"]
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu = 0.0
    while process.poll() is None:
        try:
            times = process.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    output = process.stdout.read() if process.stdout else ""
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     output)
    rate = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", output)
    data = re.search(r"traffic: .*?, .*?headers.*?, ([\d.]+\w*) \((\d+)\) data", output)
    if not (done and rate and data):
        raise RuntimeError(f"h2load said:\n{output}")
    succeeded, failed = int(done.group(2)), int(done.group(3)) + int(done.group(4))
    received = int(data.group(2))  # every answer must be the one correct answer, byte for byte in size
    wrong = abs(succeeded - received // size) if received % size == 0 else max(1, succeeded - received // size)
    server_us = (tree_cpu(server_pid) - server_cpu) * 1e6 / max(1, succeeded) if server_pid is not None else 0.0
    return {"rps": float(rate.group(2)), "errors": failed + wrong, "cpu": cpu / float(rate.group(1)),
            "server_us": server_us, "ms": [int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip()]}


def summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Rounds of one server at one level: the median round's req/s; p50/p99 over every request."""
    durations = sorted(ms for run in runs for ms in run["ms"])
    return {"rps": statistics.median(run["rps"] for run in runs), "errors": sum(run["errors"] for run in runs),
            "p50": statistics.median(durations) if durations else float("nan"),
            "p99": durations[max(0, int(len(durations) * 0.99) - 1)] if durations else float("nan"),
            "generator_cpu": max(run["cpu"] for run in runs),
            "server_us": statistics.median(run["server_us"] for run in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=4, help="h2load duration per server, level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", default="1,8,64")
    parser.add_argument("--only", default="bare,mlcomponent,mlserver,kserve")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpc.md")
    args = parser.parse_args()
    # This harness polls every server's process tree (psutil) while it runs: on CPU 0, beside the load
    # generator, so that CPU 1 is the servers' alone (unpinned, it preempted them there).
    os.sched_setaffinity(0, {0})
    if not shutil.which("h2load") or not (HERE / ".venv-mlserver/bin/mlserver").exists():
        print("installing the peers, wrk and h2load (benchmarks/setup-peers.sh) ...", file=sys.stderr)
        subprocess.run([str(HERE / "setup-peers.sh")], check=True)
    levels = [int(n) for n in args.streams.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mlc-grpc-bench-"))
    body = work / "infer.bin"
    payload = request().SerializeToString()
    body.write_bytes(b"\0" + len(payload).to_bytes(4, "big") + payload)
    script = work / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = \'{orjson.dumps(BODY).decode()}\'\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    load = os.getloadavg()
    with ExitStack() as stack:
        # Every server up at once (an idle one costs nothing), measured in turn, round after round:
        # whatever else loads the machine falls on all of them alike.
        live: dict[str, tuple[int, int, int, Any]] = {}
        for key in args.only.split(","):
            http, port = free_port(), free_port()
            server = servers(http, port, work)[key]
            if not Path(server.command[0]).exists():
                print(f"skipping {server.name}: not installed (benchmarks/setup-peers.sh)", file=sys.stderr)
                continue
            process = stack.enter_context(pinned(server.command, server.cwd, server.env, work / f"{key}.log"))
            try:
                size = answer_size(port)
            except grpc.RpcError:
                raise RuntimeError((work / f"{key}.log").read_text()[-3000:]) from None
            h2load(port, 8, 2, body, size, work / "warm-up.log")
            live[key] = (http, port, size, process)
        idle = {key: tree_rss(process.pid) for key, (_, _, _, process) in live.items()}
        peaks = {key: stack.enter_context(PeakRss(process.pid)) for key, (_, _, _, process) in live.items()}
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        rest: dict[int, list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for key, (http, port, size, process) in live.items():
                for streams in levels:
                    run = h2load(port, streams, args.seconds, body, size, work / f"{key}-{streams}.log", process.pid)
                    runs.setdefault((key, streams), []).append(run)
                    print(f"round {round_ + 1} {key} @{streams}: {run['rps']:.0f} req/s, {run['errors']} errors",
                          file=sys.stderr)
                if key == "mlcomponent":  # our REST, same process, same rounds
                    for connections in levels:
                        rest.setdefault(connections, []).append(
                            wrk(f"http://127.0.0.1:{http}/v2/models/double/infer", connections, args.seconds, script))
        results: dict[str, dict[Any, Any]] = {}
        for key in live:
            results[key] = {level: summary(runs[key, level]) for level in levels}
            results[key].update(idle_rss=idle[key], loaded_rss=peaks[key].peak)
        if "mlcomponent" in results:
            results["mlcomponent"]["rest"] = {c: {"rps": statistics.median(r["rps"] for r in rest[c])} for c in levels}
    table = render(results, levels, load, os.getloadavg(), args.rounds, args.seconds)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def render(results: dict[str, dict[Any, Any]], levels: list[int], before: tuple[float, float, float],
           after: tuple[float, float, float], rounds: int, seconds: int) -> str:
    lines = [f"Machine: {os.cpu_count()} cores; servers on CPU 1, h2load on CPU 0; {time.strftime('%Y-%m-%d %H:%M')}; "
             f"load average {before[0]:.1f} before, {after[0]:.1f} after; {rounds} interleaved rounds of {seconds} s, "
             "median round", "",
             "| gRPC server | " + " | ".join(f"req/s @{n}" for n in levels) + " | " +
             " | ".join(f"p50/p99 ms @{n}" for n in levels) + " | " + " | ".join(f"errors @{n}" for n in levels) +
             " | h2load CPU | idle RSS | loaded RSS |",
             "|---" * (3 * len(levels) + 4) + "|"]  # rate_cells gives rates, latencies and errors per level
    names = {"bare": "bare grpcio asyncio servicer (ceiling)", "mlcomponent": "mlcomponent (defaults)",
             "mlserver": "MLServer 1.7.1, parallel workers off", "kserve": "KServe 0.21 ModelServer"}
    for key, row in results.items():
        cpu = max(row[n]["generator_cpu"] for n in levels)  # type: ignore[index]
        lines.append(f"| {names[key]} | {rate_cells(row, levels)} | {cpu:.0%} | {int(row['idle_rss']) / MB:.0f} MB | "  # type: ignore[call-overload]
                     f"{int(row['loaded_rss']) / MB:.0f} MB |")  # type: ignore[call-overload]
    if "mlcomponent" in results:
        mine = results["mlcomponent"]
        lines += ratio_rows(results, levels, "mlcomponent gRPC", "bare grpcio servicer")
        lines += ["", "| server CPU µs per answer (user + system, whole process tree) | " +
                  " | ".join(f"@{n}" for n in levels) + " |", "|---" * (len(levels) + 1) + "|"]
        for key, row in results.items():
            lines.append(f"| {names[key]} | " + " | ".join(f"{row[n]['server_us']:.0f}" for n in levels) + " |")
        peers = [results[k] for k in ("mlserver", "kserve") if k in results]
        if peers:
            lines.append("| mlcomponent against the better peer by CPU (peer's µs / ours) | " + " | ".join(
                f"{min(p[n]['server_us'] for p in peers) / mine[n]['server_us']:.2f}×" for n in levels) + " |")
        if "bare" in results:
            lines.append("| mlcomponent's share of the ceiling by CPU (bare's µs / ours) | " + " | ".join(
                f"{results['bare'][n]['server_us'] / mine[n]['server_us']:.0%}" for n in levels) + " |")
        rest = mine["rest"]
        lines.append("| mlcomponent REST (wrk, N connections), req/s | " + " | ".join(
            f"{rest[n]['rps']:,.0f}" for n in levels) + " |")  # type: ignore[index]
        lines.append("| mlcomponent gRPC / mlcomponent REST | " + " | ".join(
            f"{mine[n]['rps'] / rest[n]['rps']:.2f}×" for n in levels) + " |")  # type: ignore[index]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
