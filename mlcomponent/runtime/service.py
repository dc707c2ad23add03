"""Wire one serving process together: settings → runner → spec → boxes → data plane.

Everything that can fail at start-up fails here, with the reason, before the first
request: import errors, a bad signature, a malformed docstring spec, a box that
cannot be opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.routing import BaseRoute

from mlcomponent.errors import EntryPointError
from mlcomponent.runtime.dataplane import DataPlane, Limits
from mlcomponent.runtime.entrypoint import apply_env, load_entry_point
from mlcomponent.runtime.isolated import ProcessRunner
from mlcomponent.runtime.mounts import file_box, resolve_mounts, resolve_path
from mlcomponent.runtime.runner import Health, InProcessRunner, Runner
from mlcomponent.runtime.warmup import warm_up
from mlcomponent.settings import Settings
from mlcomponent.spec.docstring import DocstringSpecError, spec_of

log = logging.getLogger("mlcomponent.service")


def load_function_and_spec(settings: Settings) -> tuple[Any, Any]:
    """Import the entry point in this process (validate, and the in-process runner)."""
    apply_env(settings.manifest_env)
    dotted = settings.manifest.inference.entry_point.python_function
    function = load_entry_point(settings.python_path, dotted)
    try:
        spec = spec_of(function)
    except DocstringSpecError as error:
        raise EntryPointError(f"{dotted}: docstring specification: {error}") from None
    return function, spec


def make_runner(settings: Settings, model_key: str,
                on_event: Callable[[str, float], None] | None = None) -> Runner:
    if settings.options.isolate:
        return ProcessRunner(str(settings.python_path), settings.manifest.inference.entry_point.python_function,
                             model_key, settings.manifest_env, settings.model_name, on_event)
    function, spec = load_function_and_spec(settings)
    return InProcessRunner(function, spec, model_key)


async def check_entry_point(settings: Settings) -> None:
    """Start-up check without importing user code here: a worker process loads it once."""
    runner = make_runner(settings, "")
    try:
        await runner.start()
    finally:
        await runner.close()


class Service:
    def __init__(self, settings: Settings, *, sync_boxes: bool = True) -> None:
        self.settings = settings
        mounts = resolve_mounts(settings, sync=sync_boxes)
        model_key = resolve_path(settings.manifest.inference.model.model_path, mounts)
        files_root = settings.files_root()
        files_root.mkdir(parents=True, exist_ok=True)
        options = settings.options
        # worker restarts and start-up times go where the data plane's observations go (metrics)
        self.runner = make_runner(settings, model_key, lambda name, value: self.dataplane.observe(name, value))
        limits = Limits(timeout=options.timeout, max_queue=options.max_queue, max_inputs=options.max_inputs,
                        max_elements=options.max_elements)
        self.dataplane = DataPlane(settings.model_name, self.runner, file_box(settings), files_root, limits)
        self._warmup: asyncio.Task[None] | None = None

    async def start(self) -> None:
        spec = await self.runner.start()
        self.dataplane.spec = spec
        if not spec.declared:
            log.warning("%s has no docstring specification: requests are not validated against one "
                        "(see docs/docstring-spec.md)", self.settings.manifest.inference.entry_point.python_function)
        if spec.example is None:
            self.dataplane.health = Health.READY
            return
        self._warmup = asyncio.create_task(self._run_warmup())

    async def _run_warmup(self) -> None:
        try:
            await warm_up(self.dataplane)
        except Exception:  # noqa: BLE001 - any failure keeps the service not ready, with the traceback
            log.exception("warm-up with the docstring's Example failed; the service stays not ready")
            self.dataplane.health = Health.WARMUP_FAILED
            return
        log.info("warm-up succeeded; ready")
        self.dataplane.health = Health.READY

    def stopping(self) -> None:
        """SIGTERM: stop being ready at once, while in-flight requests drain."""
        self.dataplane.health = Health.STOPPING

    async def stop(self) -> None:
        self.dataplane.health = Health.STOPPING
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
        await self.runner.close()

    def extra_routes(self) -> list[BaseRoute]:
        from mlcomponent.http.playground import playground_routes

        return playground_routes(self)
