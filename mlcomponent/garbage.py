"""How often the cyclic garbage collector runs in a serving process: as often as it finds garbage.

Requests in flight are young objects that reference counting frees when they end. The
collector runs when the young generation has grown by its first threshold, and at 1,000
connections the requests in flight alone passed Python's 20,000 (ours since ``gc.freeze()``):
it ran ten times a second, 7 ms each, and found them all alive. A fixed higher threshold
fixes that but lets real garbage pile up where there is some: grpcio leaves six objects of
cyclic garbage per call, so 131,072 held about 15 MB more under gRPC load. So the
threshold follows what each young collection finds: doubled (up to ``ceiling``) when it
found mostly live objects, halved (down to ``floor``) when mostly garbage.
"""

from __future__ import annotations

import gc
from typing import Any

FLOOR = 20_000  # the threshold after start-up, and the least it goes down to
OBJECTS_PER_REQUEST = 32  # tracked objects a request in flight holds (measured: 20-30 on the infer path)
MOSTLY_LIVE = 0.25  # found garbage under this share of what it looked at: run less often
MOSTLY_GARBAGE = 0.5  # over this share: run more often


def ceiling_for(max_connections: int) -> int:
    """The highest threshold: above the objects of every request in flight at the connection cap."""
    return max(FLOOR, OBJECTS_PER_REQUEST * max_connections)


def next_threshold(threshold: int, looked_at: int, collected: int, floor: int, ceiling: int) -> int:
    """The first threshold after a young collection that looked at ``looked_at`` objects and freed ``collected``."""
    if looked_at <= 0:
        return threshold
    share = collected / looked_at
    if share < MOSTLY_LIVE:
        return min(ceiling, threshold * 2)
    if share > MOSTLY_GARBAGE:
        return max(floor, threshold // 2)
    return threshold


class YoungGeneration:
    """Installs the first threshold and moves it after every collection of the young generation (a
    ``gc.callbacks`` hook: nothing runs between collections)."""

    def __init__(self, ceiling: int, floor: int = FLOOR) -> None:
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self._looking_at = 0

    def install(self) -> None:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(self.floor, middle, old)
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 0:
            return
        if phase == "start":
            self._looking_at = gc.get_count()[0]  # the young objects since the last collection
            return
        threshold, middle, old = gc.get_threshold()
        moved = next_threshold(threshold, self._looking_at, info["collected"], self.floor, self.ceiling)
        if moved != threshold:
            gc.set_threshold(moved, middle, old)
