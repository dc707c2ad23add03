"""How long the file box keeps what the service put there, and the request folders' clean-up.

- Uploads kept for replay and FILE outputs live under ``mlcomponent/<model>/`` in the file
  box for ``--keep-files`` (default 24h); a sweeper in every HTTP worker removes older
  objects (local folders and S3 alike, by the object's modification time).
- Request folders are removed before each answer; a process killed mid-request leaves
  its folder behind, so ``serve`` removes them at start-up (before any worker serves) and
  the sweeper removes those older than ``--keep-files`` — in both cases only folders no
  live process holds (``files.hold_folder``: services may share ``inferenceFilesPath``).
- The secret that signs output keys (``FileKeys``): ``MLCOMPONENT_FILES_SECRET`` when set
  (the same value in every replica keeps download links valid across them and across
  restarts), else a random one kept in ``<data-root>/files.key``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from mlcomponent.boxes.base import Box
from mlcomponent.runtime.files import KEY_ROOT, FileKeys, is_held

log = logging.getLogger("mlcomponent.retention")
REQUEST_FOLDER = re.compile(r"^[0-9a-f]{32}$")  # RequestFiles.id: uuid4().hex
SECRET_FILE = "files.key"


def files_secret(configured: str | None, data_root: Path) -> bytes:
    """The signing secret: the configured one, else ``<data-root>/files.key`` (made once, shared by workers)."""
    if configured:
        return configured.encode()
    path = data_root / SECRET_FILE
    if not path.exists():
        data_root.mkdir(parents=True, exist_ok=True)
        temporary = data_root / f".{SECRET_FILE}.{os.getpid()}"
        temporary.write_text(secrets.token_hex(32))
        temporary.chmod(0o600)
        try:
            os.link(temporary, path)  # atomic: the first worker's secret wins
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return path.read_text().strip().encode()


def file_keys(model_name: str, configured: str | None, data_root: Path) -> FileKeys:
    return FileKeys(model_name, files_secret(configured, data_root))


def sweep_box(box: Box, model_name: str, keep: float, now: float | None = None) -> int:
    """Remove this model's objects (kept uploads, outputs) older than ``keep`` seconds; returns how many."""
    cutoff = (now if now is not None else time.time()) - keep
    removed = 0
    for info in list(box.list(f"{KEY_ROOT}/{model_name}")):
        if info.modified is not None and info.modified < cutoff:
            box.delete(info.key)
            removed += 1
    return removed


def sweep_request_folders(root: Path, older_than: float | None = None, now: float | None = None) -> int:
    """Remove request folders (``older_than`` seconds old, or all of them); returns how many.

    Only folders named like a request's (32 hex digits) that no live process holds
    (``files.hold_folder``): ``inferenceFilesPath`` may be shared by several services,
    and nothing else in it, nor another's live request, is ours to remove.
    """
    cutoff = None if older_than is None else (now if now is not None else time.time()) - older_than
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        if not REQUEST_FOLDER.match(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        if is_held(Path(entry.path)):
            continue  # a live request's, of this or another service sharing the folder
        try:
            if cutoff is not None and entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed


def sweep_interval(keep: float) -> float:
    """A quarter of the retention, between 1 s and 10 min: objects outlive ``keep`` by at most that."""
    return min(600.0, max(1.0, keep / 4))


async def run_sweeper(box: Box, model_name: str, files_root: Path, keep: float) -> None:
    """Sweep the file box and the request folders every ``sweep_interval(keep)``, until cancelled."""
    interval = sweep_interval(keep)
    while True:
        try:
            objects = await asyncio.to_thread(sweep_box, box, model_name, keep)
            folders = await asyncio.to_thread(sweep_request_folders, files_root, keep)
            if objects or folders:
                log.info("retention (--keep-files %gs): removed %d object(s) from the file box and %d request "
                         "folder(s)", keep, objects, folders)
        except Exception:  # noqa: BLE001 - a failed sweep is logged and tried again next time
            log.exception("the file box sweep failed; it is tried again in %gs", interval)
        await asyncio.sleep(interval)
