"""Wire one serving process together: settings → entry point → spec → boxes → data plane.

Everything that can fail at start-up fails here, with the reason, before the first
request: import errors, a bad signature, a malformed docstring spec, a box that
cannot be opened.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.routing import BaseRoute

from mlcomponent.errors import EntryPointError
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.runtime.entrypoint import apply_env, load_entry_point
from mlcomponent.runtime.mounts import file_box, resolve_mounts, resolve_path
from mlcomponent.runtime.runner import FunctionRunner, Health
from mlcomponent.runtime.warmup import warm_up
from mlcomponent.settings import Settings
from mlcomponent.spec.docstring import DocstringSpecError, spec_of

log = logging.getLogger("mlcomponent.service")


def load_function_and_spec(settings: Settings) -> tuple[Any, Any]:
    apply_env(settings.manifest_env)
    dotted = settings.manifest.inference.entry_point.python_function
    function = load_entry_point(settings.python_path, dotted)
    try:
        spec = spec_of(function)
    except DocstringSpecError as error:
        raise EntryPointError(f"{dotted}: docstring specification: {error}") from None
    return function, spec


class Service:
    def __init__(self, settings: Settings, *, sync_boxes: bool = True) -> None:
        self.settings = settings
        self.function, self.spec = load_function_and_spec(settings)
        mounts = resolve_mounts(settings, sync=sync_boxes)
        model_key = resolve_path(settings.manifest.inference.model.model_path, mounts)
        files_root = settings.files_root()
        files_root.mkdir(parents=True, exist_ok=True)
        self.runner = FunctionRunner(self.function, model_key, settings.model_name)
        self.dataplane = DataPlane(settings.model_name, self.runner, self.spec, file_box(settings), files_root)
        self._warmup: asyncio.Task[None] | None = None
        if not self.spec.declared:
            log.warning("%s has no docstring specification: requests are not validated against one "
                        "(see docs/docstring-spec.md)", settings.manifest.inference.entry_point.python_function)

    async def start(self) -> None:
        if self.spec.example is None:
            self.dataplane.health = Health.READY
            return
        self._warmup = asyncio.create_task(self._run_warmup())

    async def _run_warmup(self) -> None:
        try:
            await warm_up(self.dataplane, self.function)
        except Exception:  # noqa: BLE001 - any failure keeps the service not ready, with the traceback
            log.exception("warm-up with the docstring's Example failed; the service stays not ready")
            self.dataplane.health = Health.WARMUP_FAILED
            return
        log.info("warm-up succeeded; ready")
        self.dataplane.health = Health.READY

    async def stop(self) -> None:
        self.dataplane.health = Health.STOPPING
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        self.runner.close()

    def extra_routes(self) -> list[BaseRoute]:
        from mlcomponent.http.playground import playground_routes

        return playground_routes(self)
