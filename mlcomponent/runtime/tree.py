"""The worker's process tree: everything the function started, found through ``/proc`` (Linux).

The worker makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``) before it imports
the user's module: a process the function starts stays in the worker's tree even after
it calls ``setsid()`` or double-forks (an orphan is re-parented to the worker, not to
init). So the memory watch counts it (``memory.tree_rss``), and ``kill_tree`` stops it
when the worker is replaced or the service shuts down. Its limit: a process that escapes
by other means (a daemon started through another service, say) is not ours to find.

Standard library only (the worker imports it).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
KILL_ROUNDS = 50  # a tree that forks while we kill it needs another look; this many at most


def become_subreaper() -> bool:
    """Orphans among this process's descendants come back to it (Linux 3.4+); False where not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as stream:
                found += [int(child) for child in stream.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first, then theirs)."""
    found: list[int] = []
    stack, seen = children(pid), {pid}
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        found.append(child)
        stack += children(child)
    return found


def _alive(pid: int) -> bool:
    """Not a zombie: a killed process stays listed until its parent reaps it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return stream.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def kill_descendants(pid: int) -> int:
    """SIGKILL everything below ``pid`` (``pid`` itself lives on, so orphans keep coming back to it
    while we look); how many were killed."""
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        alive = [child for child in descendants(pid) if _alive(child)]
        if not alive:
            break
        for child in alive:
            try:
                os.kill(child, signal.SIGKILL)
                killed.add(child)
            except OSError:
                continue
    return len(killed)
