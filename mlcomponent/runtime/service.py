"""Wire one serving process together: settings → runner → spec → boxes → data plane.

Everything that can fail at start-up fails here, with the reason, before the first
request: import errors, a bad signature, a malformed docstring spec or Example, a
box that cannot be opened. No web framework here: transports take ``dataplane``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from mlcomponent.errors import EntryPointError, MLComponentError
from mlcomponent.runtime.batching import Batcher, batching_for
from mlcomponent.runtime.dataplane import DataPlane, Limits
from mlcomponent.runtime.entrypoint import apply_env, load_entry_point
from mlcomponent.runtime.events import Observer
from mlcomponent.runtime.frames import WorkerConfig
from mlcomponent.runtime.health import State
from mlcomponent.runtime.isolated import ProcessRunner
from mlcomponent.runtime.mounts import file_box, resolve_mounts, resolve_path
from mlcomponent.runtime.retention import file_keys, run_sweeper
from mlcomponent.runtime.runner import InProcessRunner, Runner
from mlcomponent.runtime.warmup import example_problem, warm_up, warmup_failure
from mlcomponent.settings import Settings
from mlcomponent.spec.docstring import DocstringSpecError, spec_of
from mlcomponent.spec.model import BatchingSpec, FunctionSpec

log = logging.getLogger("mlcomponent.service")


def load_function_and_spec(settings: Settings) -> tuple[Any, FunctionSpec]:
    """Import the entry point in this process (``validate``, and ``--no-isolate``), spec and Example checked."""
    apply_env(settings.worker_env)
    dotted = settings.manifest.inference.entry_point.python_function
    function = load_entry_point(settings.python_path, dotted)
    try:
        spec = spec_of(function)
    except DocstringSpecError as error:
        raise EntryPointError(f"{dotted}: docstring specification: {error}") from None
    check_example(dotted, spec)
    return function, spec


def check_example(dotted: str, spec: FunctionSpec) -> None:
    problem = example_problem(spec)
    if problem:
        raise EntryPointError(f"{dotted}: docstring specification: {problem}")


def make_runner(settings: Settings, model_key: str, observer: Observer | None = None) -> Runner:
    """A worker process (the default: crash isolation, hard deadlines) or a thread here (``--no-isolate``).

    With ``--no-isolate`` user code is imported into this process, here.
    """
    if settings.options.isolate:
        limits = settings.manifest.spec.image.resource_limits
        config = WorkerConfig(str(settings.python_path), settings.manifest.inference.entry_point.python_function,
                              model_key, settings.worker_env, settings.memory_limit)
        return ProcessRunner(config, settings.model_name, observer, hidden_env=settings.secret_env_names,
                             memory_label=limits.memory if limits else None, run_limit=settings.options.timeout)
    for name in settings.secret_env_names:  # user code runs in this process: it must not see them
        os.environ.pop(name, None)
    function, spec = load_function_and_spec(settings)
    return InProcessRunner(function, spec, model_key, run_limit=settings.options.timeout)


async def check_entry_point(settings: Settings) -> None:
    """Start-up check without importing user code here: a worker process loads it once.

    The probe worker is not announced ("worker ... started"): a refused flag is said before anything starts.
    """
    runner = make_runner(settings, "")
    quiet = _Unannounced()
    logging.getLogger("mlcomponent.worker").addFilter(quiet)
    try:
        spec = await runner.start()
        check_example(settings.manifest.inference.entry_point.python_function, spec)
        check_batching(settings, spec)
    finally:
        logging.getLogger("mlcomponent.worker").removeFilter(quiet)
        await runner.close()


class _Unannounced(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


def check_batching(settings: Settings, spec: FunctionSpec) -> BatchingSpec | None:
    """The batching in force for this function (None: requests one call each); refuses bad flags."""
    options = settings.options
    delay = None if options.max_batch_delay_ms is None else options.max_batch_delay_ms / 1000
    return batching_for(spec, options.max_batch_size, delay, settings.manifest.inference.entry_point.python_function)


class Service:
    def __init__(self, settings: Settings, *, sync_boxes: bool = True, observer: Observer | None = None) -> None:
        self.settings = settings
        mounts = resolve_mounts(settings, sync=sync_boxes)
        model_key = resolve_path(settings.manifest.inference.model.model_path, mounts)
        files_root = settings.files_root()
        files_root.mkdir(parents=True, exist_ok=True)
        options = settings.options
        self.runner = make_runner(settings, model_key, observer)
        limits = Limits.of(options)
        self.dataplane = DataPlane(settings.model_name, self.runner, file_box(settings), files_root, limits,
                                   observer)
        self.dataplane.file_keys = file_keys(settings.model_name, settings.files_secret, settings.data_root)
        self._warmup: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            spec = await self.runner.start()
        except EntryPointError as error:
            if not self.settings.options.reload:
                raise
            # --reload: the module was saved broken; answer 503 with the cause until it is fixed
            self.dataplane.reason = f"cannot load the module: {str(error).splitlines()[0]}; fix it and save"
            log.error("%s (the service reloads when the module changes)", self.dataplane.reason)
            return
        self.dataplane.spec = spec
        batching = check_batching(self.settings, spec)
        if batching is not None:
            self.dataplane.batcher = Batcher(self.runner, batching.max_batch_size, batching.max_batch_delay,
                                             self.dataplane.observer, self.dataplane.admission.service)
            log.info("batching: up to %d rows per call, waiting at most %g ms for a batch to fill",
                     batching.max_batch_size, batching.max_batch_delay * 1000)
        keep = self.settings.options.keep_files
        if keep is not None:
            plane = self.dataplane
            self._sweeper = asyncio.create_task(run_sweeper(plane.file_box, plane.model_name, plane.files_root, keep))
        if not spec.declared:
            log.warning("%s has no docstring specification: requests are not validated against one "
                        "(see docs/docstring-spec.md)", self.settings.manifest.inference.entry_point.python_function)
        if spec.example is None:
            self.dataplane.health.move(State.READY)
            return
        self._warmup = asyncio.create_task(self._run_warmup())

    async def _run_warmup(self) -> None:
        try:
            await warm_up(self.dataplane)
        except Exception as error:  # noqa: BLE001 - any failure keeps the service not ready, with its reason
            entry = self.settings.manifest.inference.entry_point.python_function
            self.dataplane.reason = warmup_failure(error, entry, self.dataplane.spec.source,
                                                   str(self.settings.python_path))
            # the function's own traceback (its frames only) was logged by the runner: one line here
            log.error("%s; the service stays not ready", self.dataplane.reason,
                      exc_info=None if isinstance(error, MLComponentError) else error)
            self.dataplane.health.move(State.WARMUP_FAILED, self.dataplane.reason)
            return
        if self.dataplane.health.move(State.READY):
            log.info("warm-up succeeded; ready")

    def on_terminate(self) -> None:
        """The SIGTERM hook: stop being ready at once, and for good, while in-flight requests drain."""
        self.dataplane.health.move(State.STOPPING)

    async def stop(self) -> None:
        self.dataplane.health.move(State.STOPPING)
        for task in (self._warmup, self._sweeper):
            if task is not None and not task.done():
                task.cancel()
        await self.runner.close()
