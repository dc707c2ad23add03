"""Large tensors, side by side in one run: 1M and 16M FP32 values in and out, JSON and binary,
mlcomponent against MLServer and KServe, each on its fastest path.

    .venv/bin/python benchmarks/large.py   # about 5 minutes; writes benchmarks/results/large.md

- mlcomponent: `double.arrays` (the function declares `data: numpy`), and the spec's default
  (lists) for reference; `--max-json-body 1024` so that 16M values fit in JSON.
- MLServer 1.7.1: NumpyCodec in and out; its REST API has no binary extension, so JSON only.
- KServe 0.21: numpy in and out (`as_numpy`, `set_data_from_numpy`), binary when the request
  asks for binary outputs.

The client is `http.client`, connected before the clock starts (httpx alone costs 40 ms
for a 4 MB echo on this machine), the same for every server. The servers take turns request by
request (so a change in the machine's load hits them alike); each figure is the median of a
few requests after one warm-up, whose answer is checked. Servers on CPU 1, the
client on CPU 0.
"""

from __future__ import annotations

import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from array import array
from contextlib import ExitStack
from pathlib import Path

import orjson
import psutil
import run as bench

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MB = 1024 * 1024


def servers(port: int, work: Path) -> dict[str, bench.Server]:
    python = sys.executable
    ours = [python, "-m", "mlcomponent", "serve", "--port", str(port), "--data-root", str(work / "mlc-data"),
            "--log-level", "warning", "--max-json-body", "1024"]
    mlserver_dir = bench.mlserver_folder(work, "mlserver-large", port)
    return {
        "numpy": bench.Server("mlcomponent, `data: numpy`",
                              [*ours[:4], str(HERE / "models/double/mlcomponent-numpy.yaml"), *ours[4:]], ROOT),
        "lists": bench.Server("mlcomponent, lists (the spec's default)",
                              [*ours[:4], str(HERE / "models/double/mlcomponent.yaml"), *ours[4:]], ROOT),
        "mlserver": bench.Server("MLServer 1.7.1, NumpyCodec", [str(HERE / ".venv-mlserver/bin/mlserver"), "start",
                                                                 str(mlserver_dir)], mlserver_dir,
                                 ready_path="/v2/models/double/ready"),
        "kserve": bench.Server("KServe 0.21, numpy", [str(HERE / ".venv-kserve/bin/python"),
                                                      str(HERE / "peers/kserve_large.py"), str(port)], HERE),
    }


def request(values: array[float], binary: bool) -> tuple[bytes, dict[str, str]]:
    n = len(values)
    if binary:
        header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [n],
                                           "parameters": {"binary_data_size": 4 * n}}],
                               "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
        return header + values.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                           "Content-Type": "application/octet-stream"}
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [n], "data": values.tolist()}]}), \
        {"Content-Type": "application/json"}


def check(answer: bytes, headers: http.client.HTTPMessage, values: array[float], binary: bool) -> None:
    if binary:
        split = int(headers["Inference-Header-Content-Length"])
        got = array("f")
        got.frombytes(answer[split:])
    else:
        got = array("f", orjson.loads(answer)["outputs"][0]["data"])
    assert len(got) == len(values) and got[7] == values[7] * 2 and got[-1] == values[-1] * 2, "wrong answer"


class ProcessPeak:
    """The serving process's own RSS (not its worker's), sampled every 10 ms while a request runs."""

    def __init__(self, pid: int) -> None:
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(0.01)

    def __enter__(self) -> ProcessPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(ports: dict[str, int], keys: list[str], values: array[float], binary: bool,
          repeat: int, pids: dict[str, int], peaks: dict[str, int]) -> dict[str, list[float]]:
    """Seconds per request for each server, taking turns (after one checked warm-up request each);
    ``peaks`` gets each server's peak RSS growth over its RSS before the request (its own process)."""
    body, headers = request(values, binary)
    timings: dict[str, list[float]] = {key: [] for key in keys}
    for attempt in range(repeat + 1):
        for key in keys:
            before = psutil.Process(pids[key]).memory_info().rss
            watch = ProcessPeak(pids[key]).__enter__()
            # a connection per request: checking a 16M answer outlasts the servers' keep-alive timeouts
            connection = http.client.HTTPConnection("127.0.0.1", ports[key], timeout=600)
            connection.connect()
            started = time.perf_counter()
            connection.request("POST", "/v2/models/double/infer", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            elapsed = time.perf_counter() - started
            connection.close()
            watch.__exit__()
            peaks[key] = max(peaks.get(key, 0), watch.peak - before)
            if response.status != 200:
                raise RuntimeError(f"{key}: {response.status}: {answer[:300]!r}")
            if attempt == 0:
                check(answer, response.headers, values, binary)
            else:
                timings[key].append(elapsed)
    return timings


def main() -> None:
    parser = bench.arguments(__doc__, "large.md")
    parser.add_argument("--sizes", default="1000000,16000000")
    parser.add_argument("--only", default="numpy,lists,mlserver,kserve")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mlc-large-"))
    os.sched_setaffinity(0, {0})
    data = {n: array("f", (float(i % 1000) for i in range(n))) for n in sizes}
    load = os.getloadavg()
    results: dict[str, dict[tuple[int, bool], float]] = {}
    with ExitStack() as stack:
        ports, pids = {}, {}
        for key in args.only.split(","):  # all up at once; they take turns request by request
            port = bench.free_port()
            pids[key] = stack.enter_context(bench.running(servers(port, work)[key], port, work / f"{key}.log")).pid
            ports[key] = port
        growth: dict[tuple[str, int, bool], int] = {}
        for n in sizes:
            for binary in (False, True):
                keys = [k for k in ports if not (binary and k == "mlserver")  # no binary REST
                        and not (k == "lists" and n > 1_000_000 and not binary)]  # minutes: 16M Python floats
                repeat = 5 if n <= 1_000_000 else 3 if binary else 2
                peaks: dict[str, int] = {}
                timings = timed(ports, keys, data[n], binary, repeat, pids, peaks)
                for key in keys:
                    growth[key, n, binary] = peaks[key]
                    results.setdefault(key, {})[n, binary] = seconds = statistics.median(timings[key])
                    print(f"   {key} {n:>10,} {'binary' if binary else 'JSON'}: {seconds:.3f} s", file=sys.stderr)
    table = render(results, sizes, servers(0, work), load)
    table += ("\n| the serving process's peak RSS growth during a call / JSON body size | " +
              " | ".join(f"{n / 1e6:g}M {'binary' if b else 'JSON'}" for n in sizes for b in (False, True)) + " |\n" +
              "|---" * (2 * len(sizes) + 1) + "|\n")
    for key in results:
        cells = []
        for n in sizes:
            json_size = len(request(data[n], False)[0])
            for b in (False, True):
                cells.append(f"{growth[key, n, b] / MB:.0f} MB ({growth[key, n, b] / json_size:.1f}×)"
                             if (key, n, b) in growth else "—")
        table += f"| {servers(0, work)[key].name} | " + " | ".join(cells) + " |\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def render(results: dict[str, dict[tuple[int, bool], float]], sizes: list[int], names: dict[str, bench.Server],
           load: tuple[float, float, float]) -> str:
    columns = [(n, b) for n in sizes for b in (False, True)]
    lines = [f"Machine: {bench.machine('the client')}; load average before the run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
             "", "| seconds, FP32 in and out | " + " | ".join(
                 f"{n / 1e6:g}M {'binary' if b else 'JSON'}" for n, b in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for key, row in results.items():
        lines.append(f"| {names[key].name} | " + " | ".join(
            f"{row[c]:.3f}" if c in row else "—" for c in columns) + " |")
    if "numpy" in results:
        ours = results["numpy"]
        lines += ["", "| ratio | " + " | ".join(f"{n / 1e6:g}M" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
        lines.append("| mlcomponent JSON / binary (`data: numpy`) | " + " | ".join(
            f"{ours[n, False] / ours[n, True]:.1f}×" for n in sizes) + " |")
        peers = {k: v for k, v in results.items() if k in ("mlserver", "kserve")}
        if peers:
            lines.append("| best peer's fastest path / mlcomponent binary | " + " | ".join(
                f"{min(v for p in peers.values() for (m, _), v in p.items() if m == n) / ours[n, True]:.1f}×"
                for n in sizes) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
