"""A view of a box below a prefix: a mounted file box sees only its ``subPath``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlcomponent.boxes.base import Box, ObjectInfo, check_key


class PrefixedBox:
    def __init__(self, inner: Box, prefix: str) -> None:
        self.inner = inner
        self.prefix = check_key(prefix.strip("/"), "subPath")
        self.name = inner.name

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}"

    def fetch(self, key: str, destination: Path) -> int:
        return self.inner.fetch(self._key(key), destination)

    def store(self, source: Path, key: str, content_type: str | None = None) -> int:
        return self.inner.store(source, self._key(key), content_type)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(self._key(key))

    def read_chunks(self, key: str) -> Iterator[bytes]:
        return self.inner.read_chunks(self._key(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        cut = len(self.prefix) + 1
        for info in self.inner.list(self._key(prefix) if prefix else self.prefix):
            yield ObjectInfo(info.key[cut:], info.size, info.etag, info.modified)

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def local_folder(self, prefix: str) -> Path | None:
        return self.inner.local_folder(self._key(prefix) if prefix else self.prefix)
