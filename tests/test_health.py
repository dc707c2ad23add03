"""The service's health as a checked state machine: STOPPING is final, warm-up cannot undo it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mlcomponent.errors import NotReady
from mlcomponent.runtime.health import ALLOWED, Health, State
from mlcomponent.runtime.service import Service
from mlcomponent.settings import ServeOptions, Settings
from tests.support import write_manifest


def test_only_the_allowed_transitions_happen() -> None:
    for start in State:
        for target in State:
            health = Health()
            health.state = start
            moved = health.move(target)
            assert moved == (target is start or target in ALLOWED[start]), (start, target)
            assert health.state is (target if moved else start)
    assert ALLOWED[State.STOPPING] == frozenset()  # nothing leaves it
    assert all(State.STOPPING in ALLOWED[s] for s in State if s is not State.STOPPING)


def test_ready_follows_the_worker_and_never_comes_back_from_stopping() -> None:
    health = Health()
    health.follow_worker(False, "restarting")
    assert health.state is State.STARTING  # the worker's state moves READY and UNAVAILABLE only
    assert health.move(State.READY)
    health.follow_worker(False, "the worker is restarting")
    assert health.state is State.UNAVAILABLE and health.describe() == "unavailable: the worker is restarting"
    health.follow_worker(True, "")
    assert health.ready
    assert health.move(State.STOPPING)
    health.follow_worker(True, "")
    assert not health.move(State.READY) and health.state is State.STOPPING


def test_sigterm_during_warm_up_cannot_make_the_service_ready_again(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gate = tmp_path / "gate"
    monkeypatch.setenv("GATE_FILE", str(gate))
    settings = Settings.build(ServeOptions(manifest=str(write_manifest(tmp_path, "gated_warmup.inference")),
                                           data_root=str(tmp_path / "data")), os.environ)

    async def main() -> None:
        service = Service(settings, sync_boxes=False)
        await service.start()
        plane = service.dataplane
        try:
            assert plane.health.state is State.STARTING
            warmup = service._warmup
            assert warmup is not None and not warmup.done()
            service.on_terminate()  # SIGTERM while the model loads
            gate.touch()
            await warmup  # the warm-up call succeeds after all...
            assert plane.health.state is State.STOPPING and not plane.ready  # ...and the service stays draining
            with pytest.raises(NotReady) as refused:
                plane.admit()
            assert "not ready (stopping)" in refused.value.message
        finally:
            await service.stop()
    asyncio.run(main())
