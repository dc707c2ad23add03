"""Resolve container paths (``modelPath``) through the connected boxes' mounts.

A mounted box's ``subPath`` appears at its ``path``. Locally that is a path mapping
onto the box's folder (no copy), or onto a synced read-only cache of an S3 box.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlcomponent.boxes.base import Box
from mlcomponent.boxes.config import BoxesConfig, BoxSettings, open_box
from mlcomponent.boxes.sync import sync_prefix
from mlcomponent.manifest import ConnectedBox
from mlcomponent.settings import Settings


@dataclass(frozen=True)
class Mount:
    path: str
    folder: Path


def box_settings(settings: Settings, box_name: str) -> BoxSettings:
    """How the box is reached: the ``--boxes`` file's entry, else a local folder under data-root."""
    return _boxes_config(settings.options.boxes).settings_for(box_name)


@functools.lru_cache(maxsize=4)
def _boxes_config(path: str | None) -> BoxesConfig:
    """The ``--boxes`` file, read once per process (every mount and the file box ask for it)."""
    return BoxesConfig.load(path)


def mount_folder(settings: Settings, box: ConnectedBox, sync: bool,
                 progress: Callable[[str, int], None] | None = None) -> Path:
    """The local folder that holds what appears at ``box.path``."""
    assert box.mount_s3_box is not None and box.path is not None
    config = box_settings(settings, box.s3_box_name)
    if config.mounted:
        return Path(box.path)
    store = open_box(box.s3_box_name, config, settings.data_root, settings.environ)
    sub_path = box.mount_s3_box.sub_path.strip("/")
    folder = store.local_folder(sub_path)
    if folder is not None:
        return folder
    cache = settings.data_root / "cache" / box.s3_box_name / sub_path
    if sync:
        sync_prefix(store, sub_path, cache, progress)
    return cache


def resolve_mounts(settings: Settings, sync: bool = False,
                   progress: Callable[[str, int], None] | None = None) -> list[Mount]:
    return [Mount(box.path, mount_folder(settings, box, sync, progress))
            for box in settings.manifest.spec.connected_boxes
            if box.mount_s3_box is not None and box.path is not None]


def resolve_path(path: str, mounts: list[Mount]) -> str:
    """Map a container path to its local place; the longest matching mount wins."""
    path = posixpath.normpath(path)
    best = None
    for mount in mounts:
        root = posixpath.normpath(mount.path)
        if path == root or path.startswith(root.rstrip("/") + "/"):
            if best is None or len(root) > len(posixpath.normpath(best.path)):
                best = mount
    if best is None:
        return path
    relative = posixpath.relpath(path, posixpath.normpath(best.path))
    return str(best.folder if relative == "." else best.folder / relative)


def file_box(settings: Settings) -> Box:
    box = settings.manifest.box(settings.manifest.inference.file_exchange.file_box)
    config = box_settings(settings, box.s3_box_name)
    if box.path is not None and config.mounted:
        from mlcomponent.boxes.local import LocalBox

        return LocalBox(box.s3_box_name, Path(box.path))
    store = open_box(box.s3_box_name, config, settings.data_root, settings.environ)
    sub_path = box.mount_s3_box.sub_path.strip("/") if box.mount_s3_box else ""
    if sub_path:
        from mlcomponent.boxes.prefixed import PrefixedBox

        return PrefixedBox(store, sub_path)
    return store
