"""The file box's life cycle: `--keep-files` on local folders and on S3 (moto), a failed request's
uploads removed at once, signed download links, and request folders left by a killed process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.conftest import S3Endpoint
from tests.support import HTTP, poll, serve, write_manifest

MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"
REQUEST = '{"outputs": [{"name": "sha256"}, {"name": "copy", "parameters": {"datatype": "FILE"}}]}'
ORPHAN = "0123456789abcdef0123456789abcdef"  # named like a request folder


def upload(url: str, mode: str = "normal") -> httpx.Response:
    request = REQUEST if mode == "normal" else REQUEST[:-1] + f', "parameters": {{"mode": "{mode}"}}}}'
    return HTTP.post(url + INFER, data={"request": request},
                      files={"doc": ("report.txt", b"kept for a while", "text/plain")}, timeout=60)


def local_keys(data_root: Path) -> list[str]:
    """The files in the local file box now. ``os.walk`` skips a folder the server's sweep removes while
    it looks (``rglob`` raised FileNotFoundError on one, a flaky failure of the observer, not the sweep)."""
    box = data_root / "boxes" / "users"
    return sorted((Path(folder) / name).relative_to(box).as_posix()
                  for folder, _, names in os.walk(box / "mlcomponent") for name in names)


def test_local_box_keeps_files_for_keep_files_and_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files_root = data / "files" / "nonexistent" / "mlc" / "tmp"
    (files_root / ORPHAN / "in").mkdir(parents=True)  # left by a process killed mid-request
    (files_root / "not-ours").mkdir()
    manifest = write_manifest(tmp_path, "files_echo.inference")
    with serve(manifest, "--keep-files", "4s", data_root=data) as server:
        assert not (files_root / ORPHAN).exists(), "the start-up sweep kept an orphaned request folder"
        assert (files_root / "not-ours").exists(), "the sweep removed a folder that is not a request's"
        failed = upload(server.url, "raise")
        assert failed.status_code == 500
        assert local_keys(data) == [], "a failed request's upload was kept"
        kept = upload(server.url)
        assert kept.status_code == 200, kept.text
        output = {o["name"]: o for o in kept.json()["outputs"]}["copy"]
        uploaded = kept.json()["parameters"]["uploaded_files"]["doc"]
        assert sorted(local_keys(data)) == sorted([uploaded, output["data"][0]])
        forged = output["data"][0].replace("/outputs/", "/outputs/x")
        assert HTTP.get(f"{server.url}/v2/models/{MODEL}/files/{forged}").status_code == 404
        assert HTTP.get(f"{server.url}/v2/models/{MODEL}/files/{uploaded}").status_code == 404
        stale = files_root / ("f" * 32)
        stale.mkdir()
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        poll(lambda: local_keys(data) == [], "uploads and outputs removed after --keep-files")
        poll(lambda: not stale.exists(), "an old request folder removed by the sweeper")
        assert HTTP.get(output["parameters"]["url"]).status_code == 404
        assert not (data / "boxes" / "users" / "mlcomponent" / MODEL).exists(), "empty folders were left behind"
    assert "retention (--keep-files 4s): removed" in server.output()


def test_download_links_survive_a_restart(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "files_echo.inference")
    with serve(manifest, data_root=tmp_path / "data") as server:
        url = {o["name"]: o for o in upload(server.url).json()["outputs"]}["copy"]["parameters"]["url"]
        port = server.url.rsplit(":", 1)[1]
    with serve(manifest, data_root=tmp_path / "data") as again:  # the secret stays in data-root/files.key
        response = HTTP.get(url.replace(f":{port}/", f":{again.url.rsplit(':', 1)[1]}/"))
        assert response.status_code == 200 and response.content == b"kept for a while"


def test_s3_box_keeps_files_for_keep_files(s3: S3Endpoint, tmp_path: Path) -> None:
    boxes = s3.boxes_file(tmp_path, "models", "retention-users")
    manifest = write_manifest(tmp_path, "files_echo.inference")
    text = manifest.read_text().replace("s3BoxName: users", "s3BoxName: retention-users")
    manifest.write_text(text)
    prefix = f"mlcomponent/{MODEL}/"
    with serve(manifest, "--boxes", str(boxes), "--keep-files", "4s", data_root=tmp_path / "data",
               env=s3.server_env) as server:
        failed = upload(server.url, "raise")
        assert failed.status_code == 500 and s3.keys("retention-users", prefix) == []
        kept = upload(server.url)
        assert kept.status_code == 200, kept.text
        output = {o["name"]: o for o in kept.json()["outputs"]}["copy"]["data"][0]
        assert sorted(s3.keys("retention-users", prefix)) == sorted(
            [kept.json()["parameters"]["uploaded_files"]["doc"], output])
        poll(lambda: s3.keys("retention-users", prefix) == [], "S3 objects removed after --keep-files")


def test_a_sweep_never_removes_a_folder_a_live_request_holds(tmp_path: Path) -> None:
    """Services may share inferenceFilesPath: one's start-up sweep must leave another's live requests."""
    from mlcomponent.runtime.files import hold_folder
    from mlcomponent.runtime.retention import sweep_request_folders

    live, orphan = tmp_path / ("a" * 32), tmp_path / ("b" * 32)
    live.mkdir()
    orphan.mkdir()
    owner = hold_folder(live)
    assert owner is not None
    try:
        assert sweep_request_folders(tmp_path) == 1
        assert live.is_dir() and not orphan.exists()
    finally:
        os.close(owner)  # as when its process ends: the kernel drops the lock
    assert sweep_request_folders(tmp_path) == 1 and not live.exists()
