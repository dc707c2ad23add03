"""The manifest's memory limit, held on the inference worker from outside it.

Two watches, both cheap, neither in the request path:

- the worker checks its own peak RSS (one ``getrusage``) before and after every call (after
  the reply is encoded, so the encoding is charged to the call that made it) and, past the
  limit, answers with ``OverMemory`` and exits (``runtime/worker.py``). Growth found
  *before* a call (threads an earlier call left behind) is not charged to it;
- the HTTP process polls the worker's resident memory (its whole process tree, from
  ``/proc``, grandchildren that double-forked or called ``setsid()`` included) while it
  runs, and kills it past the limit, for a call that grows without returning.

Why not cgroups: giving the worker its own memory cgroup needs a delegated, writable
cgroup v2 subtree, and the serving process would first have to move itself into a leaf
(cgroups with controllers in use may not hold processes); containers rarely allow
either. In a pod the container's own cgroup is the hard limit, and the kernel's OOM
kills there are recognised from ``memory.events`` (``oom_kill``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from pathlib import Path

from mlcomponent.runtime.tree import descendants

MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
BUSY_INTERVAL = 0.05  # seconds between looks while a call runs
IDLE_INTERVAL = 0.5
OOM_EVENT_FILES = (Path("/sys/fs/cgroup/memory.events"), Path("/sys/fs/cgroup/memory/memory.oom_control"))


def process_rss(pid: int) -> int | None:
    """Resident bytes of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as stream:
            return int(stream.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def tree_rss(pid: int) -> int | None:
    """Resident bytes of a process and all its descendants (orphans included: the worker is their
    subreaper, ``runtime/tree.py``); None when the process is gone."""
    total = process_rss(pid)
    if total is None:
        return None
    return total + sum(process_rss(child) or 0 for child in descendants(pid))


@functools.cache
def can_watch() -> bool:
    return Path(f"/proc/{os.getpid()}/statm").exists()


async def watch(pid: int, limit: int, busy: Callable[[], bool], over: Callable[[int], None]) -> None:
    """Call ``over(rss)`` once the tree of ``pid`` passes ``limit`` bytes; return when the process is gone."""
    while True:
        await asyncio.sleep(BUSY_INTERVAL if busy() else IDLE_INTERVAL)
        rss = tree_rss(pid)
        if rss is None:
            return
        if rss > limit:
            over(rss)
            return


def oom_kills() -> int | None:
    """The kernel's count of OOM kills in this container's cgroup (v2, or v1's oom_control), when readable."""
    for path in OOM_EVENT_FILES:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None
