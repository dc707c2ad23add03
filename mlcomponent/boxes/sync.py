"""Sync a box prefix into a local read-only cache: only what changed, by size and etag."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlcomponent.boxes.base import Box

STATE_FILE = ".mlcomponent-sync.json"


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden file beside ``path``: written whole, then renamed into place."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=".sync-")
    os.close(handle)
    return Path(name)
Progress = Callable[[str, int], None]  # (file, bytes): 0 as a fetch begins, its size once it is done


def sync_prefix(box: Box, prefix: str, cache: Path, progress: Progress | None = None) -> dict[str, int]:
    """Mirror ``prefix`` of ``box`` into ``cache``; returns counts of fetched, kept and removed files."""
    cache.mkdir(parents=True, exist_ok=True)
    state_path = cache / STATE_FILE
    try:
        state: dict[str, str] = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    base = prefix.strip("/")
    remote = {info.key[len(base):].lstrip("/"): info for info in box.list(base)}
    counts = {"fetched": 0, "kept": 0, "removed": 0}
    for relative, info in sorted(remote.items()):
        target = cache / relative
        signature = f"{info.size}:{info.etag}"
        if target.is_file() and state.get(relative) == signature and target.stat().st_size == info.size:
            counts["kept"] += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(relative, 0)  # a fetch begins (a large model takes a while)
        temporary = temporary_sibling(target)
        try:
            box.fetch(info.key, temporary)
            temporary.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        state[relative] = signature
        counts["fetched"] += 1
        if progress:
            progress(relative, info.size)
    for relative in set(state) - set(remote):
        (cache / relative).unlink(missing_ok=True)
        del state[relative]
        counts["removed"] += 1
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    return counts
