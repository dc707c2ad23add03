"""Run the docstring's Example once at start-up, so the model loads before users arrive.

``check_example`` decodes the Example exactly as a request (datatypes, shapes, ranges,
files), so a bad Example is a start-up error (and a ``validate`` error), never a
service that stays unready.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from mlcomponent.errors import BadFunctionOutput, BadRequest, FunctionFailed, MLComponentError
from mlcomponent.protocol.request import decode_request
from mlcomponent.runtime.cause import short_path
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.spec.model import FunctionSpec


def nested_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape or [1]


def example_request(spec: FunctionSpec) -> tuple[dict[str, Any], dict[str, Path]]:
    """The example as a V2 body, and the local files for its FILE inputs (relative to the module)."""
    example = spec.example or {}
    base = Path(spec.source or ".").parent
    inputs, files = [], {}
    for name, value in example["inputs"].items():
        declared = spec.inputs_by_name[name]
        if declared.datatype == "FILE":
            files[name] = (base / str(value)).resolve()
            inputs.append({"name": name, "datatype": "FILE", "shape": [1], "content_type": declared.content_type})
        else:
            inputs.append({"name": name, "datatype": declared.datatype, "shape": nested_shape(value),
                           "data": value if isinstance(value, list) else [value]})
    return {"inputs": inputs, "parameters": example["parameters"]}, files


def example_problem(spec: FunctionSpec) -> str | None:
    """Why the docstring's Example would not pass as a request, or None (also None without one)."""
    if spec.example is None:
        return None
    body, files = example_request(spec)
    for name, path in files.items():
        if not path.is_file():
            return f"Example input {name!r}: no file at {path}"
    for item in body["inputs"]:
        if item["name"] in files:
            item["data"] = "example"  # stands for the uploaded file
    try:
        decode_request(body, spec)
    except BadRequest as error:
        return f"Example: {error.message}"
    return None


def warmup_failure(error: BaseException, entry: str, source: str | None, python_path: str | None) -> str:
    """Why warm-up failed, in one line: the exception and the line in the module's code, or what is wrong."""
    if isinstance(error, FunctionFailed):
        where = f" ({error.where})" if error.where else ""
        cause = f"{error.exception_type}: {error.message.partition(': ')[2]}{where}"
    elif isinstance(error, BadFunctionOutput):
        cause = f"{error.message} ({entry}{f' in {short_path(source, python_path)}' if source else ''})"
    elif isinstance(error, MLComponentError):
        cause = error.message
    else:
        cause = f"{type(error).__name__}: {error}"
    return "warm-up with the docstring's Example failed: " + " ".join(cause.split())


async def warm_up(dataplane: DataPlane) -> None:
    body, example_files = example_request(dataplane.spec)
    files = dataplane.request_files(keep_uploads=False)
    try:
        for name, source in example_files.items():
            target = files.upload_target(name, source.name)
            shutil.copyfile(source, target)
            files.uploaded[name] = (target, dataplane.spec.inputs_by_name[name].content_type)
        started = time.perf_counter()
        await dataplane.infer(body, files)
        dataplane.observer.model_loaded(time.perf_counter() - started)
    finally:
        files.cleanup()
