"""FILE inputs and outputs through boxes: local folders and a real S3 endpoint (moto server)."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import psutil
import pytest

from tests.conftest import S3Endpoint
from tests.support import HTTP, ROOT, Server, serve, serve_fixture, wait_ready, write_manifest

DIGITS = ROOT / "examples" / "digits"
IRIS = ROOT / "examples" / "iris"
MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"
MB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_input(key: str, content_type: str = "text/plain") -> dict[str, object]:
    return {"name": "doc", "datatype": "FILE", "shape": [1], "data": key, "parameters": {"content_type": content_type}}


COPY = {"name": "copy", "parameters": {"datatype": "FILE", "content_type": "text/plain"}}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digit-samples")
    subprocess.run([sys.executable, str(DIGITS / "train.py"), "--data-root", str(folder / "data"),
                    "--samples", str(folder / "png")], check=True)
    subprocess.run([sys.executable, str(IRIS / "train.py"), "--data-root", str(folder / "data")], check=True)
    return folder


# --------------------------------------------------------------------------- local boxes


@pytest.fixture(scope="module")
def local_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_fixture(tmp_path_factory.mktemp("files-local"), "files_echo.inference") as server:
        yield server


def users_box(server: Server) -> Path:
    return server.data_root / "boxes" / "users"


def files_root(server: Server) -> Path:
    return server.data_root / "files" / "nonexistent" / "mlc" / "tmp"


def test_file_input_from_a_local_box_key_and_file_output_download(local_files: Server) -> None:
    box = users_box(local_files)
    (box / "inbox").mkdir(parents=True, exist_ok=True)
    (box / "inbox" / "note.txt").write_bytes(b"hello boxes")
    with local_files.client() as client:
        response = client.post(INFER, json={"inputs": [file_input("inbox/note.txt")],
                                            "outputs": [{"name": "sha256"}, {"name": "content_type"}, COPY]})
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["sha256"]["data"] == [sha256(b"hello boxes")]
        assert outputs["content_type"]["data"] == ["text/plain"]
        copy = outputs["copy"]
        assert copy["datatype"] == "FILE" and copy["shape"] == [1]
        key = copy["data"][0]
        assert key.startswith(f"mlcomponent/{MODEL}/outputs/") and key.endswith("/copy.txt")
        assert (box / key).read_bytes() == b"hello boxes"
        download = client.get(copy["parameters"]["url"])
        assert download.status_code == 200 and download.content == b"hello boxes"
        assert download.headers["content-type"].startswith("text/plain")
    assert list(files_root(local_files).iterdir()) == []


def test_multipart_upload_is_kept_in_the_box_for_replay(local_files: Server) -> None:
    with local_files.client() as client:
        response = client.post(INFER, data={"request": '{"outputs": [{"name": "sha256"}]}'},
                               files={"doc": ("report.txt", b"uploaded bytes", "text/plain")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["outputs"][0]["data"] == [sha256(b"uploaded bytes")]
        key = body["parameters"]["uploaded_files"]["doc"]
        assert (users_box(local_files) / key).read_bytes() == b"uploaded bytes"
        replay = client.post(INFER, json={"inputs": [file_input(key)], "outputs": [{"name": "sha256"}]})
        assert replay.json()["outputs"][0]["data"] == [sha256(b"uploaded bytes")]


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        ("../secrets.txt", "must not contain '..'"),
        ("inbox/../../x", "must not contain '..'"),
        ("/etc/passwd", "must be a relative key"),
        ("escape/passwd", "resolves outside the box"),
        ("no/such/object.txt", "has no object 'no/such/object.txt'"),
    ],
)
def test_keys_are_confined_to_the_box(local_files: Server, key: str, needle: str) -> None:
    box = users_box(local_files)
    box.mkdir(parents=True, exist_ok=True)
    if not (box / "escape").exists():
        (box / "escape").symlink_to("/etc")
    with local_files.client() as client:
        response = client.post(INFER, json={"inputs": [file_input(key)]})
    assert response.status_code in (400, 404), response.text
    assert needle in response.json()["error"]


@pytest.mark.parametrize(("mode", "needle"), [
    ("escape", "'/etc/hostname' is outside the request folder"),  # a returned path outside the folder
    ("raise", "failed after writing the output"),                  # the function wrote, then raised
])
def test_a_refused_or_failed_output_leaves_no_files_and_no_output_objects(local_files: Server, mode: str,
                                                                          needle: str) -> None:
    box = users_box(local_files)
    (box / "inbox").mkdir(parents=True, exist_ok=True)
    (box / "inbox" / f"{mode}.txt").write_bytes(mode.encode())
    before = sorted(p for p in box.rglob("*") if "outputs" in p.parts)
    with local_files.client() as client:
        response = client.post(INFER, json={"inputs": [file_input(f"inbox/{mode}.txt")], "outputs": [COPY],
                                            "parameters": {"mode": mode}})
    assert response.status_code == 500
    assert needle in response.json()["error"]
    assert sorted(p for p in box.rglob("*") if "outputs" in p.parts) == before
    assert list(files_root(local_files).iterdir()) == []


@pytest.mark.parametrize("mode", ["normal", "escape", "raise"])
def test_the_request_folder_is_gone_before_the_answer_starts(tmp_path: Path, mode: str) -> None:
    """Deterministic, in-process: the endpoint's ``send`` looks at the folder the moment the answer starts."""
    import asyncio
    import importlib.util

    from mlcomponent.boxes.local import LocalBox
    from mlcomponent.http.infer import InferEndpoint
    from mlcomponent.runtime.dataplane import DataPlane
    from mlcomponent.runtime.health import State
    from mlcomponent.runtime.runner import InProcessRunner
    from mlcomponent.spec.model import UNDECLARED

    loaded = importlib.util.spec_from_file_location("files_echo", ROOT / "tests/fixtures/entrypoints/files_echo.py")
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    box = LocalBox("users", tmp_path / "box")
    (tmp_path / "box" / "inbox").mkdir(parents=True)
    (tmp_path / "box" / "inbox" / "a.txt").write_text("a")
    root = tmp_path / "requests"
    root.mkdir()
    plane = DataPlane(MODEL, InProcessRunner(module.inference, UNDECLARED, "key"), box, root)
    plane.health.move(State.READY)
    body = orjson.dumps({"inputs": [file_input("inbox/a.txt")], "outputs": [COPY], "parameters": {"mode": mode}})
    seen: list[tuple[int, list[Path]]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            seen.append((int(str(message["status"])), list(root.iterdir())))

    scope = {"type": "http", "method": "POST", "path": INFER, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(InferEndpoint(plane, MB, MB)(scope, receive, send))  # type: ignore[arg-type]
    assert seen == [(200 if mode == "normal" else 500, [])]


def test_downloads_only_serve_files_this_service_wrote(local_files: Server) -> None:
    box = users_box(local_files)
    (box / "private").mkdir(parents=True, exist_ok=True)
    (box / "private" / "p.txt").write_text("secret")
    with local_files.client() as client:
        foreign = client.get(f"/v2/models/{MODEL}/files/private/p.txt")
        assert foreign.status_code == 404 and "only outputs this service wrote" in foreign.json()["error"]
        missing = client.get(f"/v2/models/{MODEL}/files/mlcomponent/{MODEL}/outputs/nothing/x.txt")
        assert missing.status_code == 404
        dotted = client.get(f"/v2/models/{MODEL}/files/mlcomponent/{MODEL}/%2E%2E/%2E%2E/private/p.txt")
        assert dotted.status_code in (400, 404) and "secret" not in dotted.text


def test_twenty_concurrent_requests_each_get_their_own_file(local_files: Server) -> None:
    payloads = [os.urandom(2048 + i) for i in range(20)]

    def call(payload: bytes) -> tuple[str, str]:
        with local_files.client() as client:
            response = client.post(INFER, data={"request": '{"outputs": [{"name": "sha256"}, {"name": "copy", '
                                                '"parameters": {"datatype": "FILE"}}]}'},
                                   files={"doc": ("blob.bin", payload, "application/octet-stream")})
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            copied = client.get(outputs["copy"]["parameters"]["url"]).content
            return outputs["sha256"]["data"][0], sha256(copied)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(call, payloads))
    assert results == [(sha256(p), sha256(p)) for p in payloads]


# --------------------------------------------------------------------------- the examples, local and S3


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` blank pixels: a few KB that decode to width*height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    packed = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", packed) + chunk(b"IEND", b""))


def test_digits_example_on_local_boxes_multipart_and_key(samples: Path) -> None:
    with serve(DIGITS / "mlcomponent.yaml", data_root=samples / "data") as server:
        wait_ready(server)
        with server.client() as client:
            for digit in (0, 4, 8):
                png = (samples / "png" / f"digit-{digit}.png").read_bytes()
                sent = client.post("/v2/models/digits/infer", files={"image": ("d.png", png, "image/png")})
                assert sent.status_code == 200, sent.text
                assert sent.json()["outputs"][0]["data"] == [digit]
                key = sent.json()["parameters"]["uploaded_files"]["image"]
                again = client.post("/v2/models/digits/infer", json={"inputs": [
                    {"name": "image", "datatype": "FILE", "shape": [1], "data": [key], "content_type": "image/png"}]})
                assert again.json()["outputs"][0]["data"] == [digit]
            pid = psutil.Process(server.process.pid)
            before = sum(p.memory_info().rss for p in pid.children(recursive=True))
            bad = {"empty": (b"", "the image file is empty"),
                   "garbage": (os.urandom(3000), "not an image this model can read"),
                   "bomb": (png_bomb(13_000, 13_000), "the image is too large: at most 16,777,216 pixels"),
                   "big": (png_bomb(5_000, 5_000), "at most 16,777,216 pixels (e.g. 4096x4096) are accepted; this one "
                                                   "is 5000x5000"),
                   "truncated": ((samples / "png" / "digit-1.png").read_bytes()[:120], "damaged or truncated")}
            for name, (content, needle) in bad.items():
                refused = client.post("/v2/models/digits/infer", files={"image": (f"{name}.png", content, "image/png")})
                assert refused.status_code == 400, (name, refused.text)
                assert needle in refused.json()["error"], (name, refused.text)
                assert "uploaded_files" not in refused.text
            grown = sum(p.memory_info().rss for p in pid.children(recursive=True)) - before
            assert grown < 100 * MB, f"the workers grew by {grown / MB:.0f} MB on refused images"
            assert client.get("/v2/health/ready").status_code == 200


def test_digits_example_on_s3_with_the_model_synced_from_its_box(samples: Path, s3: S3Endpoint,
                                                                  tmp_path: Path) -> None:
    boxes = s3.boxes_file(tmp_path, "digits-data", "users")
    model = samples / "data" / "boxes" / "digits-data" / "users/developer/file_groups/models/digits.joblib"
    s3.client.upload_file(str(model), "digits-data", "users/developer/file_groups/models/digits.joblib")
    png = (samples / "png" / "digit-6.png").read_bytes()
    s3.client.put_object(Bucket="users", Key="users/alice/file_groups/six.png", Body=png, ContentType="image/png")
    with serve(DIGITS / "mlcomponent.yaml", "--boxes", str(boxes), data_root=tmp_path / "data",
               env=s3.server_env) as server:
        wait_ready(server)
        cached = tmp_path / "data" / "cache" / "digits-data" / "users/developer/file_groups/models/digits.joblib"
        assert cached.read_bytes() == model.read_bytes()
        with server.client() as client:
            by_key = client.post("/v2/models/digits/infer", json={"inputs": [
                {"name": "image", "datatype": "FILE", "shape": [1], "data": "users/alice/file_groups/six.png",
                 "parameters": {"content_type": "image/png"}}]})
            assert by_key.status_code == 200, by_key.text
            assert by_key.json()["outputs"][0]["data"] == [6]
            uploaded = client.post("/v2/models/digits/infer", files={"image": ("six.png", png, "image/png")})
            assert uploaded.json()["outputs"][0]["data"] == [6]
            key = uploaded.json()["parameters"]["uploaded_files"]["image"]
            assert s3.client.get_object(Bucket="users", Key=key)["Body"].read() == png


@pytest.mark.parametrize("on_s3", [False, True], ids=["local", "s3"])
def test_table_example_csv_in_csv_out(samples: Path, s3: S3Endpoint, tmp_path: Path, on_s3: bool) -> None:
    args: list[str] = []
    data_root = samples / "data"
    env = None
    if on_s3:
        args = ["--boxes", str(s3.boxes_file(tmp_path, "iris-data", "users"))]
        model = data_root / "boxes/iris-data/users/developer/file_groups/models/iris.joblib"
        s3.client.upload_file(str(model), "iris-data", "users/developer/file_groups/models/iris.joblib")
        data_root, env = tmp_path / "data", s3.server_env
    table = (IRIS / "iris" / "sample.csv").read_bytes()
    with serve(IRIS / "table.yaml", *args, data_root=data_root, env=env) as server:
        wait_ready(server)
        with server.client() as client:
            bad = {"empty": (b"", "the table is empty"),
                   "binary": (b"\xff\xfe" + os.urandom(500), "not UTF-8 text"),
                   "columns": (b"a,b\n1,2\n", "lacks the column(s) sepal_length"),
                   "text": (table.replace(b"5.7", b"tall"), "line 3, column sepal_length: 'tall' is not a number"),
                   "nan": (table.replace(b"5.7", b"nan"), "is not a finite number")}
            for name, (content, needle) in ([] if on_s3 else bad.items()):
                refused = client.post("/v2/models/iris-table/infer", files={"table": (f"{name}.csv", content, "text/csv")})
                assert refused.status_code == 400 and needle in refused.json()["error"], (name, refused.text)
            response = client.post("/v2/models/iris-table/infer", files={"table": ("flowers.csv", table, "text/csv")})
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o for o in response.json()["outputs"]}
            assert outputs["rows"]["data"] == [3]
            csv_out = client.get(outputs["predictions"]["parameters"]["url"]).text.splitlines()
            assert csv_out[0] == "id,sepal_length,sepal_width,petal_length,petal_width,species"
            assert [line.rsplit(",", 1)[1] for line in csv_out[1:]] == ["setosa", "versicolor", "virginica"]
            key = outputs["predictions"]["data"][0]
            if on_s3:
                stored = s3.client.get_object(Bucket="users", Key=key)
                assert stored["Body"].read().decode().splitlines() == csv_out
                assert stored["ContentType"] == "text/csv"


# --------------------------------------------------------------------------- 200 MB, streamed


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def big_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MB)
    with path.open("wb") as stream:
        for index in range(size // MB):
            chunk = block[index % 7:] + block[: index % 7]
            digest.update(chunk)
            stream.write(chunk)
    return digest.hexdigest()


@pytest.mark.timeout(600)
def test_a_200_mb_file_streams_through_s3_and_multipart_in_bounded_memory(s3: S3Endpoint, tmp_path: Path) -> None:
    size = 200 * MB
    source = tmp_path / "big.bin"
    expected = big_file(source, size)
    boxes = s3.boxes_file(tmp_path, "models", "users")
    s3.client.upload_file(str(source), "users", "big/big.bin")
    manifest = write_manifest(tmp_path, "files_echo.inference")
    with serve(manifest, "--boxes", str(boxes), "--max-upload", "512", data_root=tmp_path / "data",
               env=s3.server_env) as server:
        process = psutil.Process(server.process.pid)
        with server.client(timeout=300) as client:
            warm = client.post(INFER, files={"doc": ("s.bin", b"x" * 1024, "application/octet-stream")})
            assert warm.status_code == 200, warm.text
            baseline = peak_rss(process.pid)
            through_s3 = client.post(INFER, json={"inputs": [file_input("big/big.bin", "application/octet-stream")],
                                                  "outputs": [{"name": "sha256"}, {"name": "size"}, COPY]})
            assert through_s3.status_code == 200, through_s3.text
            outputs = {o["name"]: o for o in through_s3.json()["outputs"]}
            assert outputs["sha256"]["data"] == [expected] and outputs["size"]["data"] == [size]
            copy_key = outputs["copy"]["data"][0]
            assert s3.client.head_object(Bucket="users", Key=copy_key)["ContentLength"] == size
            with source.open("rb") as stream:
                through_multipart = client.post(INFER, data={"request": '{"outputs": [{"name": "sha256"}]}'},
                                                files={"doc": ("big.bin", stream, "application/octet-stream")})
            assert through_multipart.status_code == 200, through_multipart.text
            assert through_multipart.json()["outputs"][0]["data"] == [expected]
            growth = peak_rss(process.pid) - baseline
    print(f"\npeak RSS growth for 200 MB through S3 (in and out) and multipart: {growth / MB:.1f} MB")
    assert growth < 60 * MB, f"peak RSS grew by {growth / MB:.1f} MB for a 200 MB file"


def test_upload_over_the_limit_is_413_and_leaves_nothing(local_files: Server, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "files_echo.inference")
    with serve(manifest, "--max-upload", "1", data_root=tmp_path / "data") as server:
        with server.client() as client:
            response = client.post(INFER, files={"doc": ("x.bin", os.urandom(2 * MB), "application/octet-stream")})
            assert response.status_code == 413 and "--max-upload" in response.json()["error"]
            assert client.get("/v2/health/ready").status_code == 200
        root = tmp_path / "data" / "files" / "nonexistent" / "mlc" / "tmp"
        assert list(root.iterdir()) == []
        assert not list((tmp_path / "data" / "boxes" / "users").rglob("*.bin"))


def test_sync_fetches_only_what_changed(s3: S3Endpoint, tmp_path: Path) -> None:
    from mlcomponent.boxes.s3 import S3Box
    from mlcomponent.boxes.sync import sync_prefix

    bucket = s3.bucket("sync-test")
    for name, body in (("m/a.bin", b"a"), ("m/sub/b.bin", b"bb"), ("other/c.bin", b"c")):
        s3.client.put_object(Bucket=bucket, Key=name, Body=body)
    box = S3Box("sync-test", bucket, endpoint_url=s3.url, region="us-east-1", access_key="test-key",
                secret_key="test-secret")
    cache = tmp_path / "cache"
    assert sync_prefix(box, "m", cache) == {"fetched": 2, "kept": 0, "removed": 0}
    assert (cache / "sub" / "b.bin").read_bytes() == b"bb" and not (cache / "c.bin").exists()
    assert not os.access(cache / "a.bin", os.W_OK) or os.geteuid() == 0
    assert (cache / "a.bin").stat().st_mode & 0o222 == 0
    assert sync_prefix(box, "m", cache) == {"fetched": 0, "kept": 2, "removed": 0}
    s3.client.put_object(Bucket=bucket, Key="m/a.bin", Body=b"changed")
    s3.client.delete_object(Bucket=bucket, Key="m/sub/b.bin")
    assert sync_prefix(box, "m", cache) == {"fetched": 1, "kept": 0, "removed": 1}
    assert (cache / "a.bin").read_bytes() == b"changed" and not (cache / "sub" / "b.bin").exists()


def test_model_path_resolves_through_an_s3_mount(s3: S3Endpoint, tmp_path: Path) -> None:
    boxes = s3.boxes_file(tmp_path, "models", "users")
    s3.client.put_object(Bucket="models", Key="m/model.bin", Body=b"weights v1")
    manifest = write_manifest(tmp_path, "read_model.inference")
    with serve(manifest, "--boxes", str(boxes), data_root=tmp_path / "data", env=s3.server_env) as server:
        answer = HTTP.post(server.url + INFER, json={"inputs": []}).json()
    assert answer["outputs"][0]["data"] == ["weights v1"]
