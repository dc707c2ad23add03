"""Run the docstring's Example once at start-up, so the model loads before users arrive."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from mlcomponent.runtime.dataplane import DataPlane


def nested_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape or [1]


def example_request(dataplane: DataPlane) -> tuple[dict[str, Any], dict[str, Path]]:
    """The example as a V2 body, and the local files for its FILE inputs (relative to the module)."""
    example = dataplane.spec.example or {}
    base = Path(dataplane.spec.source or ".").parent
    inputs, files = [], {}
    for name, value in example["inputs"].items():
        declared = dataplane.spec.inputs_by_name[name]
        if declared.datatype == "FILE":
            files[name] = (base / str(value)).resolve()
            inputs.append({"name": name, "datatype": "FILE", "shape": [1], "content_type": declared.content_type})
        else:
            inputs.append({"name": name, "datatype": declared.datatype, "shape": nested_shape(value),
                           "data": value if isinstance(value, list) else [value]})
    return {"inputs": inputs, "parameters": example["parameters"]}, files


async def warm_up(dataplane: DataPlane) -> None:
    body, example_files = example_request(dataplane)
    files = dataplane.request_files(lambda key: key)
    files.keep_uploads = False
    try:
        for name, source in example_files.items():
            target = files.upload_target(name, source.name)
            shutil.copyfile(source, target)
            files.uploaded[name] = (target, dataplane.spec.inputs_by_name[name].content_type)
        started = time.perf_counter()
        await dataplane.infer(body, files)
        dataplane.observe("model_load_seconds", time.perf_counter() - started)
    finally:
        files.cleanup()
