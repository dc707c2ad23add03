"""Adaptive batching, side by side in one run: mlcomponent with batching on and off, and
MLServer's adaptive batching, on the iris example and on a model with a fixed cost per call.

    .venv/bin/python benchmarks/batching.py   # about 6 minutes; writes benchmarks/results/batching.md

Each request carries one row. Both servers batch up to 64 rows and wait at most 2 ms
(mlcomponent: the models' docstrings; MLServer: `max_batch_size: 64`, `max_batch_time:
0.002`). mlcomponent runs on its defaults: admission by expected wait queues 256
connections of these models (well within the 5 s budget). Servers on CPU 1, wrk on CPU 0,
as in run.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
import orjson
import run as bench

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROW = [[5.1, 3.5, 1.4, 0.2]]
MODELS = {
    "iris": ("iris-classifier", {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}),
    "fixed": ("fixed", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}),
}


def servers(port: int, work: Path, model: str) -> dict[str, bench.Server]:
    python = sys.executable
    iris_data = work / "iris-data"
    manifest = {"iris": ROOT / "examples/iris/mlcomponent.yaml", "fixed": HERE / "models/fixed/mlcomponent.yaml"}[model]
    ours = [python, "-m", "mlcomponent", "serve", str(manifest), "--port", str(port), "--data-root", str(iris_data),
            "--log-level", "warning"]
    mlserver_dir = bench.mlserver_folder(work, f"mlserver-{model}", port)
    name = MODELS[model][0]
    path = f"/v2/models/{name}/infer"
    return {
        "on": bench.Server(f"mlcomponent, batching on ({model})", ours, ROOT, path=path),
        "off": bench.Server(f"mlcomponent, batching off ({model})", [*ours, "--max-batch-size", "1"], ROOT, path=path),
        "mlserver": bench.Server(f"MLServer 1.7.1 adaptive batching ({model})",
                                 [str(HERE / ".venv-mlserver/bin/mlserver"), "start", str(mlserver_dir)], mlserver_dir,
                                 path=path, ready_path=f"/v2/models/{name}/ready",
                                 env={"IRIS_MODEL": str(iris_data / "boxes/iris-data/users/developer/file_groups/models"
                                                        "/iris.joblib")}),
    }


def main() -> None:
    parser = bench.arguments(__doc__, "batching.md")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", default="1,8,64,256")
    parser.add_argument("--models", default="fixed,iris")
    parser.add_argument("--only", default="on,off,mlserver")
    args = parser.parse_args()
    levels = [int(c) for c in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mlc-batching-"))
    subprocess.run([sys.executable, str(ROOT / "examples/iris/train.py"), "--data-root", str(work / "iris-data")],
                   check=True, capture_output=True)
    load = os.getloadavg()
    results: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for model in args.models.split(","):
        _, body = MODELS[model]
        script = work / f"{model}.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = \'{orjson.dumps(body).decode()}\'\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
        with ExitStack() as stack:
            urls = {}
            for key in args.only.split(","):  # all up at once; they take turns at each concurrency
                port = bench.free_port()
                server = servers(port, work, model)[key]
                stack.enter_context(bench.running(server, port, work / f"{model}-{key}.log"))
                urls[key] = url = f"http://127.0.0.1:{port}{server.path}"
                check = httpx.post(url, json=body, timeout=10)
                assert check.status_code == 200, check.text
                bench.wrk(url, 64, 2, script)
            for connections in levels:
                for key, url in urls.items():
                    row = bench.wrk(url, connections, args.seconds, script)
                    results.setdefault(model, {}).setdefault(key, {})[connections] = row
                    print(f"   {model} {key} @{connections}: {row}", file=sys.stderr)
    table = render(results, levels, load)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def render(results: dict[str, dict[str, dict[int, dict[str, float]]]], levels: list[int],
           load: tuple[float, float, float]) -> str:
    names = {"on": "mlcomponent, batching on", "off": "mlcomponent, batching off",
             "mlserver": "MLServer 1.7.1, adaptive batching"}
    lines = [f"Machine: {bench.machine()}; load average before the run {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}", ""]
    for model, rows in results.items():
        lines += [f"**{model}** (one row per request; up to 64 rows, 2 ms)", "",
                  "| server | " + " | ".join(f"req/s @{c}" for c in levels) + " | " +
                  " | ".join(f"p50/p99 ms @{c}" for c in levels) + " | errors |",
                  "|---" * (2 * len(levels) + 2) + "|"]
        for key, runs in rows.items():
            lines.append(f"| {names[key]} | " + " | ".join(f"{runs[c]['rps']:,.0f}" for c in levels) + " | " +
                         " | ".join(f"{runs[c]['p50']:.2f} / {runs[c]['p99']:.2f}" for c in levels) + " | " +
                         f"{sum(int(runs[c]['errors']) for c in levels)} |")
        if "on" in rows:
            lines += ["", "| ratio | " + " | ".join(f"@{c}" for c in levels) + " |", "|---" * (len(levels) + 1) + "|"]
            for other in ("off", "mlserver"):
                if other in rows:
                    lines.append(f"| batching on / {names[other]} | " + " | ".join(
                        f"{rows['on'][c]['rps'] / rows[other][c]['rps']:.2f}×" for c in levels) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
