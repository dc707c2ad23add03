"""The service's health as an explicit state machine.

STARTING → READY (warm-up passed, or no Example) | WARMUP_FAILED; any → STOPPING (SIGTERM).
"""

from __future__ import annotations

import enum


class Health(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    WARMUP_FAILED = "warmup_failed"
    STOPPING = "stopping"
