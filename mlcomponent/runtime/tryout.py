"""``mlcomponent validate``'s run of the docstring's Example, as warm-up runs it at start-up.

So a first module's run-time mistakes (a missing model file, ``return outputs`` without
``, model``, a wrong output shape) fail ``validate`` in one line that names the fix,
instead of a service that stays not ready.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mlcomponent.boxes.local import LocalBox
from mlcomponent.runtime.dataplane import DataPlane, Limits
from mlcomponent.runtime.mounts import resolve_mounts, resolve_path
from mlcomponent.runtime.service import make_runner
from mlcomponent.runtime.warmup import warm_up, warmup_failure
from mlcomponent.settings import Settings

QUIETED = ("mlcomponent.worker", "mlcomponent.runtime")  # the runners' loggers: their tracebacks are a service's


async def run_example(settings: Settings) -> tuple[bool, str]:
    """``validate``: the docstring's Example through the function, as warm-up runs it at start-up.

    In a worker with the manifest's limits, against the model where ``modelPath`` resolves
    here (local boxes; S3 boxes only when synced before). Files go to a temporary folder.
    Returns (ran, line): ran is False when it was skipped, and line says why; else line is
    the one-line problem, or "" when the Example passed.
    """
    model = settings.manifest.inference.model
    mounts = resolve_mounts(settings, sync=False)
    model_key = resolve_path(model.model_path, mounts)
    box_folder = next((m.folder for m in mounts if model.model_path.startswith(m.path.rstrip("/") + "/")
                       or model.model_path == m.path), None)
    if box_folder is None:
        return False, f"modelPath {model.model_path!r} is under no mounted box of spec.connectedBoxes"
    if not box_folder.is_dir():
        return False, (f"the model box's folder {box_folder} is not here (a local box not filled yet, or an S3 "
                       "box not synced): put the model there, or serve once to sync; --no-run skips this")
    entry = settings.manifest.inference.entry_point.python_function
    runner = make_runner(settings, model_key)
    silent = _Silent()  # validate prints the one line; the traceback is for a service's log
    for name in QUIETED:
        logging.getLogger(name).addFilter(silent)
    with tempfile.TemporaryDirectory(prefix="mlcomponent-validate-") as scratch:
        plane = DataPlane(settings.model_name, runner, LocalBox("validate", Path(scratch) / "box"),
                          Path(scratch) / "files", Limits(timeout=settings.options.timeout))
        try:
            plane.spec = await runner.start()
            if plane.spec.example is None:
                return False, "the docstring has no Example to run"
            await warm_up(plane)
        except Exception as error:  # noqa: BLE001 - every failure is the line validate prints
            return True, example_hint(warmup_failure(error, entry, plane.spec.source, str(settings.python_path)),
                                      error, model.model_path, model_key)
        finally:
            await runner.close()
            for name in QUIETED:
                logging.getLogger(name).removeFilter(silent)
    return True, ""


class _Silent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def example_hint(reason: str, error: BaseException, model_path: str, model_key: str) -> str:
    """The reason, with the fix named for the mistakes a first module makes."""
    text = str(error)
    if "No such file" in text or "FileNotFoundError" in text:
        return (f"{reason}; is the model file there? modelPath {model_path!r} is {model_key} here: put the model "
                "there, or fix spec.mlService.inference.model.modelPath")
    if "does not match the declared" in text or "differs from the declared" in text:
        return f"{reason}; return what the docstring's Outputs: declares, or change the declaration"
    return reason
