"""gRPC: mlcomponent against MLServer's and KServe's gRPC servers on the same doubling model.

    .venv/bin/python benchmarks/grpc_bench.py   # about 5 minutes on 2 cores (+ the peers' install, once)

The load generator is h2load (nghttp2's, in C): one HTTP/2 connection carrying 1, 8 and 64
concurrent streams of the protocol's ``ModelInfer`` (typed ``fp32_contents``, which every server
here reads). It is measured first against the bare grpcio servicer (benchmarks/peers/bare_grpc.py,
the ceiling for a Python gRPC server): the table gives the share of its core h2load used, which
says how far it is from being the bottleneck.

h2load counts HTTP/2 answers, and a gRPC error is an HTTP 200 too, so every run is checked: the
data bytes received must be exactly (answers × the size of the one correct answer, taken from a
real client's call first). Our REST (wrk, as benchmarks/run.py drives it) is measured in the same
run for the comparison. Server on CPU 1, generator on CPU 0; only ratios from one run mean anything.
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
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import psutil
from open_inference.grpc.protocol import ModelInferRequest, ModelInferResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BODY, HERE, MB, ROOT, PeakRss, free_port, pinned, rate_cells, ratio_rows, tree_rss, wrk  # noqa: E402

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


def h2load(port: int, streams: int, seconds: int, body: Path, size: int, work: Path) -> dict[str, float]:
    """One run; requests/s, p50/p99 ms (from h2load's per-request log), the generator's CPU share."""
    log = work / f"h2load-{port}-{streams}.log"
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
    durations = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines() if line.strip())
    received = int(data.group(2))  # every answer must be the one correct answer, byte for byte in size
    wrong = abs(succeeded - received // size) if received % size == 0 else max(1, succeeded - received // size)
    return {"rps": float(rate.group(2)), "p50": statistics.median(durations) if durations else float("nan"),
            "p99": durations[int(len(durations) * 0.99) - 1] if durations else float("nan"),
            "errors": failed + wrong, "generator_cpu": cpu / float(rate.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--streams", default="1,8,64")
    parser.add_argument("--only", default="bare,mlcomponent,mlserver,kserve")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "grpc.md")
    args = parser.parse_args()
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
    results: dict[str, dict[str, object]] = {}
    load = os.getloadavg()
    for key in args.only.split(","):
        http, port = free_port(), free_port()
        server = servers(http, port, work)[key]
        if not Path(server.command[0]).exists():
            print(f"skipping {server.name}: not installed (benchmarks/setup-peers.sh)", file=sys.stderr)
            continue
        print(f"== {server.name}", file=sys.stderr)
        with pinned(server.command, server.cwd, server.env, work / f"{key}.log") as process:
            try:
                size = answer_size(port)
            except grpc.RpcError:
                raise RuntimeError((work / f"{key}.log").read_text()[-3000:]) from None
            h2load(port, 8, 3, body, size, work)  # warm-up
            row: dict[str, object] = {"idle_rss": tree_rss(process.pid)}
            with PeakRss(process.pid) as peak:
                for streams in levels:
                    row[streams] = h2load(port, streams, args.seconds, body, size, work)
                    print(f"   {streams:>3} streams: {row[streams]}", file=sys.stderr)
                if key == "mlcomponent":  # our REST, same process, same run
                    row["rest"] = {c: wrk(f"http://127.0.0.1:{http}/v2/models/double/infer", c, args.seconds, script)
                                   for c in levels}
                    print(f"   REST: {row['rest']}", file=sys.stderr)
            row["loaded_rss"] = peak.peak
        results[key] = row
    table = render(results, levels, load, os.getloadavg())
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def render(results: dict[str, dict[str, object]], levels: list[int], before: tuple[float, float, float],
           after: tuple[float, float, float]) -> str:
    lines = [f"Machine: {os.cpu_count()} cores; server on CPU 1, h2load on CPU 0; {time.strftime('%Y-%m-%d %H:%M')}; "
             f"load average {before[0]:.1f} before, {after[0]:.1f} after", "",
             "| gRPC server | " + " | ".join(f"req/s @{n}" for n in levels) + " | " +
             " | ".join(f"p50/p99 ms @{n}" for n in levels) + " | errors | h2load CPU | idle RSS | loaded RSS |",
             "|---" * (2 * len(levels) + 5) + "|"]
    names = {"bare": "bare grpcio asyncio servicer (ceiling)", "mlcomponent": "mlcomponent (defaults)",
             "mlserver": "MLServer 1.7.1, parallel workers off", "kserve": "KServe 0.21 ModelServer"}
    for key, row in results.items():
        cpu = max(row[n]["generator_cpu"] for n in levels)  # type: ignore[index]
        lines.append(f"| {names[key]} | {rate_cells(row, levels)} | {cpu:.0%} | {int(row['idle_rss']) / MB:.0f} MB | "  # type: ignore[call-overload]
                     f"{int(row['loaded_rss']) / MB:.0f} MB |")  # type: ignore[call-overload]
    if "mlcomponent" in results:
        mine = results["mlcomponent"]
        lines += ratio_rows(results, levels, "mlcomponent gRPC", "bare grpcio servicer")
        rest = mine["rest"]
        lines.append("| mlcomponent REST (wrk, N connections), req/s | " + " | ".join(
            f"{rest[n]['rps']:,.0f}" for n in levels) + " |")  # type: ignore[index]
        lines.append("| mlcomponent gRPC / mlcomponent REST | " + " | ".join(
            f"{mine[n]['rps'] / rest[n]['rps']:.2f}×" for n in levels) + " |")  # type: ignore[index]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
