"""Test helpers: write manifests, start the real service as a user would (the CLI), and talk to it.

One contract per helper: ``call`` (a request to a ``do``-driven fixture), ``calls_logged`` (what
the function ran), ``poll`` (wait for a condition, never a fixed sleep), ``scrape`` and ``metric``
(one series of ``/metrics``), ``restarts``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINTS = ROOT / "tests" / "fixtures" / "entrypoints"
# The spec's example manifest (../shared/spec/seed-manifest.yaml), copied here so that the
# suite runs without ../shared; tests/test_manifest.py checks the copy is still verbatim.
SEED_MANIFEST = ENTRYPOINTS.parent / "spec" / "seed-manifest.yaml"
SHARED_SEED_MANIFEST = ROOT.parent / "shared" / "spec" / "seed-manifest.yaml"
# The suite's one-off requests (``HTTP.get(...)`` where one would write ``httpx.get(...)``): each
# ``httpx.get`` builds a client and with it an SSL context, 20 ms of CPU, which a poll pays every
# turn. No connection is kept: every request is a new connection, as with ``httpx.get``.
HTTP = httpx.Client(timeout=5.0, limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))


def not_run(reason: str) -> None:
    """A test whose machine prerequisite is missing (root, apt, ../shared, containers).

    Reported as "not run, because ..." (and listed in the summary at the end) on a
    developer's machine; on CI (``CI`` set) every prerequisite must be there, so it fails.
    """
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"not run on CI, which must run everything: {reason}")
    pytest.skip(f"not run, because {reason}")  # tests/conftest.py lists these at the end


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port P with P+1 free too (etcd's client and peer ports), below the ephemeral range.

    Ports the kernel hands out for outgoing connections (32768 and up) could take P+1
    between our check and etcd's bind; below 32768 nothing is handed out by the kernel.
    """
    import random

    for _ in range(200):
        port = random.randrange(20000, 32000, 2)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports between 20000 and 32000")


def deadline_us(seconds: float) -> int:
    """The V2 ``timeout`` request parameter for a deadline of ``seconds``: the protocol counts microseconds."""
    return round(seconds * 1_000_000)


def manifest_data(function: str, *, name: str = "test-model", python_path: str | None = None,
                  env: dict[str, str] | None = None, cpu: str = "1", memory: str = "256M") -> dict[str, Any]:
    return {
        "apiVersion": "unified-platform.cs.hse.ru/v1",
        "kind": "MLComponent",
        "metadata": {"name": name, "namespace": "tests"},
        "spec": {
            "image": {"existingImageName": "example.com/test:1", "resourceLimits": {"cpu": cpu, "memory": memory}},
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            "mlService": {
                "packageRegistryName": "pypi",
                "inference": {
                    "fileExchange": {"fileBox": "user-box", "inferenceFilesPath": "/nonexistent/mlc/tmp"},
                    "model": {"modelBox": "model-box", "modelPath": "/models/model.bin"},
                    "entryPoint": {"pythonPath": python_path or str(ENTRYPOINTS), "pythonFunction": function},
                },
            },
            "connectedBoxes": [
                {"name": "model-box", "path": "/models", "mountS3Box": {"s3BoxName": "models", "subPath": "m"}},
                {"name": "user-box", "copyS3Box": {"s3BoxName": "users"}},
            ],
        },
    }


def write_manifest(folder: Path, function: str, **kwargs: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{function.replace('.', '-')}.yaml"
    path.write_text(yaml.safe_dump(manifest_data(function, **kwargs), sort_keys=False))
    return path


class Server:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path, data_root: Path) -> None:
        self.url = url
        self.data_root = data_root
        self.process = process
        self.log = log

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until_live(url: str, process: subprocess.Popen[bytes], log: Path, deadline_s: float = 60,
                    path: str = "/v2/health/live") -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if HTTP.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not up after {deadline_s}s:\n{log.read_text()}")


@contextmanager
def serve(manifest: Path, *args: str, data_root: Path | None = None, env: dict[str, str] | None = None,
          wait_path: str = "/v2/health/live", cwd: Path | None = None,
          open_files: int | None = None) -> Iterator[Server]:
    """Run `mlcomponent serve` in a subprocess on a free port; stop it (SIGTERM) afterwards.

    ``open_files`` lowers the server's limit of open files (RLIMIT_NOFILE, soft and hard).
    """
    port = free_port()
    log = (data_root or manifest.parent) / f"server-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command: Sequence[str] = [sys.executable, "-m", "mlcomponent", "serve", str(manifest), "--port", str(port),
                              *(["--data-root", str(data_root)] if data_root else []), *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                   env={**os.environ, **(env or {})}, start_new_session=True,
                                   preexec_fn=None if open_files is None else lambda: limit_open_files(open_files))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process, log, path=wait_path)
        yield Server(url, process, log, data_root or manifest.parent / "data")
    finally:
        stop_group(process)


def limit_open_files(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group started for a test, SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def serve_fixture(folder: Path, function: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """A fixture entry point (tests/fixtures/entrypoints) served from ``folder``."""
    with serve(write_manifest(folder, function), *args, data_root=folder / "data", env=env) as server:
        yield server


def wait_ready(server: Server, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if HTTP.get(server.url + "/v2/health/ready", timeout=2).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {deadline_s}s:\n{server.output()}")


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlcomponent", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


INFER = "/v2/models/test-model/infer"


def call(server: Server, do: str = "echo", *, headers: dict[str, str] | None = None, http_timeout: float = 60,
         **params: Any) -> httpx.Response:
    """One request, no inputs, to a fixture that acts on its ``do`` parameter (``behaviours``, ``hostile``);
    ``params`` are the request's parameters (``timeout`` among them: the request's own deadline)."""
    body = {"inputs": [], "parameters": {"do": do, **params}}
    return HTTP.post(server.url + INFER, json=body, headers=headers, timeout=http_timeout)


def calls_logged(log: Path) -> list[str]:
    """The calls the function ran, one line each (the fixtures' CALL_LOG); none before the first."""
    return log.read_text().splitlines() if log.exists() else []


def poll(condition: Callable[[], object], what: str, deadline_s: float = 60) -> None:
    """Wait for ``condition`` (never a fixed sleep), failing with ``what`` after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def scrape(server: Server) -> str:
    """The service's ``/metrics`` text (open without a token)."""
    return HTTP.get(server.url + "/metrics", timeout=30).text


def metric(text: str, name: str) -> float:
    """The value of one series in Prometheus text (``name`` with its labels, as printed); 0.0 when it is
    absent (a labelled counter not yet counted)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def restarts(server: Server) -> float:
    """Inference workers replaced so far (``mlcomponent_worker_restarts_total``)."""
    return metric(scrape(server), "mlcomponent_worker_restarts_total")


@asynccontextmanager
async def uvicorn_on_loopback(app: Any, protocol: type, **config: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """A real uvicorn server for ``app`` on a free loopback port, on this event loop, with our connection
    ``protocol``; yields it and its port, and stops it afterwards."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, loop="asyncio",
                                           lifespan="off", log_level="error", **config))
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started and not serving.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield server, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await serving


@contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """Only reference counting frees anything meanwhile: what is left alive would wait for the cyclic GC."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
