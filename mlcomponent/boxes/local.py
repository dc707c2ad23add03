"""A box that is a local folder: the embedded default, and the fast test double."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlcomponent.boxes.base import CHUNK, ObjectInfo, check_key
from mlcomponent.errors import BadRequest, NotFound


class LocalBox:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"LocalBox({self.name!r}, {str(self.root)!r})"

    def path_of(self, key: str) -> Path:
        """The file behind ``key``, refusing any key that resolves (through links) outside the box."""
        check_key(key)
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise BadRequest(f"key {key!r} resolves outside the box {self.name!r} (through a symlink); refused")
        return path

    def fetch(self, key: str, destination: Path) -> int:
        source = self.path_of(key)
        if not source.is_file():
            raise NotFound(f"file box {self.name!r} has no object {key!r}")
        shutil.copyfile(source, destination)
        return destination.stat().st_size

    def store(self, source: Path, key: str, content_type: str | None = None) -> int:
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        os.close(handle)
        try:
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target.stat().st_size

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        if not path.is_file():
            return None
        info = path.stat()
        return ObjectInfo(key, info.st_size, f"{info.st_size}-{info.st_mtime_ns}")

    def read_chunks(self, key: str) -> Iterator[bytes]:
        path = self.path_of(key)
        if not path.is_file():
            raise NotFound(f"file box {self.name!r} has no object {key!r}")
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK):
                yield chunk

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.path_of(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".upload-"):
                key = path.relative_to(self.root).as_posix()
                info = path.stat()
                yield ObjectInfo(key, info.st_size, hashlib.md5(key.encode()).hexdigest())

    def local_folder(self, prefix: str) -> Path | None:
        return self.path_of(prefix) if prefix else self.root
