"""For module developers: `init`, the Python client and `mlcomponent infer`, against real services."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlcomponent.client import (
    AsyncClient,
    BadRequestError,
    Client,
    DeadlineExceeded,
    InferenceError,
    NotFoundError,
    NotReadyError,
    ServiceUnavailable,
)
from tests.support import Server, free_port, run_cli, serve, serve_fixture, wait_ready, write_manifest


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_fixture(tmp_path_factory.mktemp("client-files"), "files_echo.inference") as server:
        yield server


@pytest.fixture(scope="module")
def behaviours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("client-behaviours")
    log = folder / "calls.log"
    with serve(write_manifest(folder, "behaviours.inference"), data_root=folder / "data",
               env={"CALL_LOG": str(log)}) as server:
        yield server, log


# --------------------------------------------------------------------------- init


def test_init_writes_a_module_that_validates_serves_and_passes_its_own_test(tmp_path: Path) -> None:
    module = tmp_path / "Churn Predictor"
    created = run_cli("init", str(module))
    assert created.returncode == 0, created.stderr
    manifest = module / "mlcomponent.yaml"
    checked = run_cli("validate", str(manifest))
    assert checked.returncode == 0 and "docstring spec OK (1 inputs, 2 outputs, 1 parameters, with an example)" \
        in checked.stdout, checked.stdout + checked.stderr
    with serve(manifest, cwd=module) as server:
        wait_ready(server)
        with Client(server.url) as client:
            result = client.infer({"features": [[1, 2, 3]]}, parameters={"threshold": 1.0})
        assert result["label"].tolist() == ["low"] and result["score"].dtype == np.float32
        cli = run_cli("infer", server.url, "-i", "features=1,2,3,0,0,0", "-p", "threshold=0.2")
        assert cli.returncode == 0, cli.stderr
        assert "high" in cli.stdout and "low" in cli.stdout
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=module,
                         capture_output=True, text=True, timeout=180)
    assert own.returncode == 0, own.stdout + own.stderr


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    assert run_cli("init", str(tmp_path / "m")).returncode == 0
    (tmp_path / "m" / "m" / "predict.py").write_text("# mine\n")
    again = run_cli("init", str(tmp_path / "m"))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "m" / "m" / "predict.py").read_text() == "# mine\n"
    assert run_cli("init", str(tmp_path / "m"), "--force").returncode == 0
    assert "def inference" in (tmp_path / "m" / "m" / "predict.py").read_text()


# --------------------------------------------------------------------------- the client


@pytest.mark.parametrize(("values", "dtype"), [
    (np.array([[1.5, -2.0]], dtype=np.float32), np.float32),
    (np.array([1e300, -1.0]), np.float64),
    (np.array([[7], [-8]], dtype=np.int32), np.int32),
])
def test_client_round_trips_every_numeric_datatype(echo: Server, values: np.ndarray, dtype: type) -> None:
    with Client(echo.url) as client:
        result = client.infer({"x": values}, outputs=["x"])
    assert result["x"].dtype == dtype and np.array_equal(result["x"], values)


def test_client_round_trips_strings_and_takes_a_model_url(echo: Server) -> None:
    with Client(echo.url + "/v2/models/test-model") as client:
        assert client.ready()
        result = client.infer({"words": ["héllo", "world"]}, outputs=["words"], request_id="r-1")
    assert result["words"].tolist() == ["héllo", "world"] and result.id == "r-1"


def test_clients_share_one_tls_context_that_verifies_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the CA bundle is 20 ms of CPU: once per process, not once per client."""
    import ssl

    import mlcomponent.client as client_module

    made: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counted(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    client_module._tls.cache_clear()
    for _ in range(3):
        Client(f"http://127.0.0.1:{free_port()}").close()
        asyncio.run(AsyncClient(f"https://127.0.0.1:{free_port()}").aclose())
    assert len(made) == 1
    assert made[0].verify_mode == ssl.CERT_REQUIRED and made[0].check_hostname


def test_async_client(echo: Server) -> None:
    async def main() -> list[float]:
        async with AsyncClient(echo.url) as client:
            assert await client.ready()
            result = await client.infer({"x": [0.25, 0.5]}, outputs=["x"])
            return list(result["x"].tolist())

    assert asyncio.run(main()) == [0.25, 0.5]


def test_async_client_is_the_twin_of_client(files: Server, tmp_path: Path) -> None:
    """live(), streamed uploads and downloads with progress, as the sync client has them."""
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(300_000))
    sent: list[int] = []
    received: list[int] = []

    async def main() -> Path:
        async with AsyncClient(files.url) as client:
            assert await client.live()
            result = await client.infer(files={"doc": source}, progress=sent.append,
                                        outputs=["sha256", {"name": "copy", "parameters": {"datatype": "FILE"}}])
            assert result["sha256"].tolist() == [hashlib.sha256(source.read_bytes()).hexdigest()]
            return await client.download(result.files["copy"], tmp_path / "out/", progress=received.append)

    saved = asyncio.run(main())
    assert saved.read_bytes() == source.read_bytes()
    assert sum(sent) == sum(received) == source.stat().st_size
    assert not asyncio.run(AsyncClient(f"http://127.0.0.1:{free_port()}").live())


def test_client_files_in_and_out(files: Server, tmp_path: Path) -> None:
    source = tmp_path / "report.txt"
    source.write_bytes(os.urandom(50_000))
    with Client(files.url) as client:
        result = client.infer(files={"doc": source},
                              outputs=["sha256", {"name": "copy", "parameters": {"datatype": "FILE"}}])
        assert result["sha256"].tolist() == [hashlib.sha256(source.read_bytes()).hexdigest()]
        saved = client.download(result.files["copy"], tmp_path / "out/")
    assert saved.read_bytes() == source.read_bytes()


def test_cli_files_in_and_out(files: Server, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("to and fro")
    out = tmp_path / "downloads"
    result = run_cli("infer", files.url, "-f", f"doc=@{source}", "--file-output", "copy", "--output", "sha256",
                     "-o", str(out))
    assert result.returncode == 0, result.stderr
    saved = list(out.iterdir())
    assert len(saved) == 1 and saved[0].read_text() == "to and fro"
    assert saved[0].name in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")


def test_errors_are_typed_and_carry_the_service_message(echo: Server, behaviours: tuple[Server, Path]) -> None:
    server, _ = behaviours
    with Client(echo.url) as client:
        with pytest.raises(BadRequestError) as bad:
            client.infer([{"name": "x", "datatype": "INT32", "shape": [1], "data": [2**40]}])
        assert bad.value.status == 400 and "out of INT32 range" in bad.value.message
    with Client(echo.url, model="nope") as client, pytest.raises(NotFoundError):
        client.infer({"x": [1]})
    with Client(server.url) as client:
        with pytest.raises(InferenceError, match="asked to fail"):
            client.infer({"x": [1]}, parameters={"do": "raise"})
        with pytest.raises(DeadlineExceeded):
            client.infer({"x": [1]}, parameters={"do": "sleep", "seconds": 5}, timeout=0.3)


def test_not_ready_is_typed_with_retry_after(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "gated_warmup.inference")
    with serve(manifest, data_root=tmp_path / "data", env={"GATE_FILE": str(tmp_path / "never")}) as server:
        with Client(server.url) as client, pytest.raises(NotReadyError) as caught:
            client.infer({"x": [1]})
    assert caught.value.status == 503 and caught.value.retry_after == 1


def test_cli_reports_the_service_error_and_exits_non_zero(echo: Server) -> None:
    result = run_cli("infer", echo.url, "-i", "x=1.5", "-p", "mode=fast", "--model", "missing")
    assert result.returncode == 1 and "unknown model 'missing'" in result.stderr


def test_connection_failures_before_sending_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from httpcore._backends.sync import SyncBackend

    attempts: list[int] = []
    connect = SyncBackend.connect_tcp

    def counted(self: SyncBackend, host: str, port: int, *args: object, **kwargs: object) -> object:
        attempts.append(port)
        return connect(self, host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SyncBackend, "connect_tcp", counted)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the transport's back-off between tries
    port = free_port()  # nothing listens here: every attempt fails to connect, before anything is sent
    with Client(f"http://127.0.0.1:{port}", model="m", retries=2) as client, \
            pytest.raises(ServiceUnavailable, match="cannot connect"):
        client.infer([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}])
    assert attempts == [port] * 3  # the first try and two retries, then the error


def test_a_request_that_may_have_run_is_not_sent_again(behaviours: tuple[Server, Path]) -> None:
    server, log = behaviours
    before = len(log.read_text().splitlines()) if log.exists() else 0
    with Client(server.url, timeout=0.5, retries=3) as client, pytest.raises(ServiceUnavailable, match="not retried"):
        client.infer({"x": [1]}, parameters={"do": "sleep", "seconds": 1.5, "tag": "once"})
    with Client(server.url, timeout=30) as client:  # queued behind the slow one: it returns after it
        client.infer({"x": [1]}, parameters={"tag": "after"})
    assert log.read_text().splitlines()[before:] == ["sleep once", "echo after"]


def test_retry_unsafe_sends_a_request_that_may_have_run_again(behaviours: tuple[Server, Path]) -> None:
    """The opt-in: with retry_unsafe the sync and async clients re-send after a read timeout."""
    server, log = behaviours
    before = len(log.read_text().splitlines()) if log.exists() else 0
    slow = {"do": "sleep", "seconds": 0.8}
    with Client(server.url, timeout=0.3, retries=1, retry_unsafe=True) as client, pytest.raises(ServiceUnavailable):
        client.infer({"x": [1]}, parameters={**slow, "tag": "sync"})

    async def twice() -> None:
        async with AsyncClient(server.url, timeout=0.3, retries=1, retry_unsafe=True) as client:
            await client.infer({"x": [1]}, parameters={**slow, "tag": "async"})

    with pytest.raises(ServiceUnavailable):
        asyncio.run(twice())
    with Client(server.url, timeout=30) as client:  # runs after the four sleeps: the log is complete
        client.infer({"x": [1]}, parameters={"tag": "after"})
    assert log.read_text().splitlines()[before:] == ["sleep sync", "sleep sync", "sleep async", "sleep async",
                                                     "echo after"]


# --------------------------------------------------------------------------- --reload


def test_serve_reload_picks_up_code_changes_on_the_same_port(tmp_path: Path) -> None:
    module = tmp_path / "live"
    assert run_cli("init", str(module)).returncode == 0
    with serve(module / "mlcomponent.yaml", "--reload", cwd=module) as server:
        wait_ready(server)
        with Client(server.url) as client:
            assert client.infer({"features": [[1, 2, 3]]})["label"].tolist() == ["high"]
        predict = module / "live" / "predict.py"
        predict.write_text(predict.read_text().replace('high if s >= threshold else low', '"changed"'))
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(server.url, timeout=5) as client:
                    if client.infer({"features": [[1, 2, 3]]})["label"].tolist() == ["changed"]:
                        break
            except (ServiceUnavailable, NotReadyError):
                pass
            assert time.monotonic() < deadline, "the service did not reload"
            time.sleep(0.2)
