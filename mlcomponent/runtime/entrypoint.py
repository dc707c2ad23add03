"""Import the inference function named by ``pythonFunction``, with ``pythonPath`` on sys.path."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlcomponent.errors import EntryPointError

ARGUMENTS = ("parameters", "inputs", "output_fields", "model_key", "model")
InferenceFunction = Callable[..., Any]


def apply_env(env: Mapping[str, str]) -> None:
    """``spec.env`` reaches the process environment before the user's module is imported."""
    os.environ.update(env)


def load_entry_point(python_path: Path, dotted: str) -> InferenceFunction:
    """Import and check the function; every failure says why, at start-up."""
    if not python_path.is_dir():
        raise EntryPointError(f"pythonPath {str(python_path)!r} is not a folder; it is relative to the manifest's folder")
    if str(python_path) not in sys.path:
        sys.path.insert(0, str(python_path))
    module_name, _, function_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise EntryPointError(
                f"cannot import module {module_name!r} for pythonFunction {dotted!r}: no module named "
                f"{error.name!r} under pythonPath {str(python_path)!r}") from None
        raise EntryPointError(f"importing {module_name!r} failed: {error}\n{traceback.format_exc()}") from None
    except Exception as error:  # noqa: BLE001 - any import-time failure is reported whole
        raise EntryPointError(f"importing {module_name!r} failed: {type(error).__name__}: {error}\n"
                              f"{traceback.format_exc()}") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise EntryPointError(f"module {module_name!r} has no attribute {function_name!r} (pythonFunction {dotted!r})")
    if not callable(function):
        raise EntryPointError(f"{dotted!r} is a {type(function).__name__}, not a function")
    check_signature(function, dotted)
    return function  # type: ignore[no-any-return]


def check_signature(function: Callable[..., Any], dotted: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*ARGUMENTS)
    except TypeError as error:
        raise EntryPointError(
            f"{dotted}{signature} cannot be called as inference(parameters, inputs, output_fields, "
            f"model_key, model): {error}") from None
    if inspect.iscoroutinefunction(function):
        raise EntryPointError(f"{dotted} is async; the inference function must be a plain function")
