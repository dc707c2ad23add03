"""The Box interface, and the key rules every box enforces."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlcomponent.errors import BadRequest, shown

CHUNK = 1024 * 1024
MAX_KEY_BYTES = 1024  # S3's own limit
MAX_SEGMENT_BYTES = 255  # a file name, on every common file system


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float | None = None  # seconds since the epoch (retention)


def check_key(key: object, what: str = "key") -> str:
    """A key is a relative, normalised POSIX path inside a box; anything else is refused."""
    if not isinstance(key, str) or not key:
        raise BadRequest(f"{what} must be a non-empty string naming an object in the file box")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES or any(
            len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for part in key.split("/")):
        raise BadRequest(f"{what} {key[:60]!r}... is too long: at most {MAX_KEY_BYTES} bytes, "
                         f"{MAX_SEGMENT_BYTES} per segment")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise BadRequest(f"{what} {shown(key)} must be a relative key inside the box (no leading '/', no '\\')")
    parts = key.split("/")
    if any(part in ("..", ".") for part in parts) or posixpath.normpath(key) != key.rstrip("/"):
        raise BadRequest(f"{what} {shown(key)} must not contain '..', '.' or empty segments")
    return key


class Box(Protocol):
    """What the runtime needs of a box. Keys are checked by ``check_key`` first."""

    name: str

    def fetch(self, key: str, destination: Path) -> int:
        """Copy one object to a local file (streaming); returns its size. NotFound if absent."""

    def store(self, source: Path, key: str, content_type: str | None = None) -> int:
        """Upload a local file as one object, atomically: readers never see a partial object."""

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and etag of an object, or None when it does not exist."""

    def read_chunks(self, key: str) -> Iterator[bytes]:
        """Stream an object's bytes (for downloads)."""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively)."""

    def delete(self, key: str) -> None:
        """Remove one object; nothing happens when it does not exist."""

    def local_folder(self, prefix: str) -> Path | None:
        """A local folder that already holds ``prefix`` (local boxes), else None (needs a sync)."""
