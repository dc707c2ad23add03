"""The service's health: an explicit state machine whose transitions are checked.

::

    STARTING ──► READY ◄──► UNAVAILABLE      (no worker can serve: restarting, or stuck)
        │          │             │
        ▼          ▼             ▼
    WARMUP_FAILED ─┴──► STOPPING ◄┘          (SIGTERM, shutdown: final, never back)

Every state may go to STOPPING; nothing leaves it. A move the machine does not allow is
refused (``move`` returns False and nothing changes), so a warm-up that finishes after
SIGTERM cannot make a draining service ready again.
"""

from __future__ import annotations

import enum
import logging

log = logging.getLogger("mlcomponent.health")


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    UNAVAILABLE = "unavailable"
    WARMUP_FAILED = "warmup_failed"
    STOPPING = "stopping"


ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.READY, State.WARMUP_FAILED, State.STOPPING}),
    State.READY: frozenset({State.UNAVAILABLE, State.STOPPING}),
    State.UNAVAILABLE: frozenset({State.READY, State.STOPPING}),
    State.WARMUP_FAILED: frozenset({State.STOPPING}),
    State.STOPPING: frozenset(),
}


class Health:
    """One service's state; ``move`` is the only way it changes."""

    def __init__(self) -> None:
        self.state = State.STARTING
        self.reason = ""  # why not ready, for messages (UNAVAILABLE)

    def move(self, to: State, reason: str = "") -> bool:
        """Go to ``to`` when the machine allows it (staying put is allowed); False and no change when not."""
        if to is self.state:
            return True
        if to not in ALLOWED[self.state]:
            log.debug("health: %s -> %s refused", self.state.value, to.value)
            return False
        self.state, self.reason = to, reason
        return True

    def follow_worker(self, can_serve: bool, reason: str) -> None:
        """READY while a worker can serve, UNAVAILABLE while none can (only between those two)."""
        if self.state is State.READY and not can_serve:
            self.move(State.UNAVAILABLE, reason)
        elif self.state is State.UNAVAILABLE and can_serve:
            self.move(State.READY)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def describe(self) -> str:
        return f"{self.state.value}: {self.reason}" if self.reason else self.state.value
