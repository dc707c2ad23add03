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
        try:
            path = (self.root / key).resolve()
        except (OSError, RuntimeError):  # a symlink loop, a name the file system refuses
            raise BadRequest(f"key {key!r} cannot be resolved in the box {self.name!r}") from None
        if path != self.root and self.root not in path.parents:
            raise BadRequest(f"key {key!r} resolves outside the box {self.name!r} (through a symlink); refused")
        return path

    def fetch(self, key: str, destination: Path) -> int:
        source = self.path_of(key)
        if not _is_file(source):
            raise NotFound(f"file box {self.name!r} has no object {key!r}")
        try:
            shutil.copyfile(source, destination)
        except OSError as error:  # never a server path in the message
            raise NotFound(f"file box {self.name!r}: cannot read {key!r}: {error.strerror}") from None
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
        if not _is_file(path):
            return None
        info = path.stat()
        return ObjectInfo(key, info.st_size, f"{info.st_size}-{info.st_mtime_ns}", info.st_mtime)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        path = self.path_of(key)
        if not _is_file(path):
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
                yield ObjectInfo(key, info.st_size, hashlib.md5(key.encode()).hexdigest(), info.st_mtime)

    def delete(self, key: str) -> None:
        """Remove the file, then the folders it leaves empty (up to the box's root)."""
        path = self.path_of(key)
        path.unlink(missing_ok=True)
        for folder in path.parents:
            if folder == self.root or self.root not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): stop climbing

    def local_folder(self, prefix: str) -> Path | None:
        return self.path_of(prefix) if prefix else self.root


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False
