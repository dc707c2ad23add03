"""Import the inference function named by ``pythonFunction``, with ``pythonPath`` on sys.path."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlcomponent.errors import EntryPointError
from mlcomponent.runtime.cause import location, short_path, user_traceback

ARGUMENTS = ("parameters", "inputs", "output_fields", "model_key", "model")
InferenceFunction = Callable[..., Any]


def apply_env(env: Mapping[str, str]) -> None:
    """``spec.env`` reaches the process environment before the user's module is imported."""
    os.environ.update(env)


# Modules the examples import, and the distribution that provides each (for a one-line hint).
EXAMPLE_PACKAGES = {"sklearn": "scikit-learn", "joblib": "joblib", "numpy": "numpy", "PIL": "pillow"}


def load_entry_point(python_path: Path, dotted: str) -> InferenceFunction:
    """Import and check the function; every failure says why, at start-up, with a did-you-mean."""
    if not python_path.is_dir():
        raise EntryPointError(f"pythonPath {str(python_path)!r} is not a folder; it is relative to the manifest's "
                              f"folder{_did_you_mean(python_path.name, _folders(python_path.parent), str(python_path.parent))}")
    if str(python_path) not in sys.path:
        sys.path.insert(0, str(python_path))
    module_name, _, function_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise EntryPointError(
                f"cannot import module {module_name!r} for pythonFunction {dotted!r}: no module named "
                f"{missing!r} under pythonPath {str(python_path)!r}{_module_suggestion(python_path, dotted, missing)}"
            ) from None
        if missing.split(".")[0] == module_name.split(".")[0]:  # a module of the same package, imported by it
            raise EntryPointError(f"importing {module_name!r} failed: it imports {missing!r}, which is not under "
                                  f"pythonPath {str(python_path)!r}{_module_suggestion(python_path, missing, missing)}"
                                  ) from None
        if missing:
            raise EntryPointError(_missing_dependency(module_name, missing)) from None
        raise EntryPointError(f"importing {module_name!r} failed: {error}\n{traceback.format_exc()}") from None
    except SyntaxError as error:  # one line: the file, line and what Python says (no importlib frames)
        raise EntryPointError(syntax_error_line(module_name, error, python_path)) from None
    except Exception as error:  # noqa: BLE001 - any import-time failure: its line, then the module's own frames
        text = traceback.format_exc()
        where = location(text)
        raise EntryPointError(f"importing {module_name!r} failed: {type(error).__name__}: {error}"
                              f"{f' ({where})' if where else ''}\n{user_traceback(text)}") from None
    function = getattr(module, function_name, None)
    if function is None:
        functions = [name for name, value in vars(module).items() if callable(value) and not name.startswith("_")]
        close = difflib.get_close_matches(function_name, functions, n=1, cutoff=0.6)
        hint = f"; did you mean {module_name + '.' + close[0]!r}?" if close else (
            f" (its functions: {', '.join(sorted(functions))})" if functions else "")
        raise EntryPointError(f"module {module_name!r} has no attribute {function_name!r} (pythonFunction {dotted!r}){hint}")
    if not callable(function):
        raise EntryPointError(f"{dotted!r} is a {type(function).__name__}, not a function")
    check_signature(function, dotted)
    return function  # type: ignore[no-any-return]


def unchecked_reason(python_path: Path, module_root: Path, dotted: str) -> str | None:
    """Why the entry point cannot be checked on this machine, or None when it can.

    It can be checked whenever its package can be found (under pythonPath or installed),
    and whenever the module's code is here at all (Python files under pythonPath, or beside
    a pythonPath that is not there): then a name that does not import is a mistake, not a
    missing checkout. Only a manifest on its own, away from any code, is left unchecked.
    """
    if python_path.is_dir():
        if _find_spec(dotted.split(".")[0], python_path) or _holds_python(python_path):
            return None
    elif _holds_python(module_root) or _holds_python(python_path.parent):
        return None  # a pythonPath that is not there, beside code that is: a typo
    return (f"no Python code under pythonPath {str(python_path)!r} or beside the manifest "
            "(a manifest checked on its own)")


def _find_spec(name: str, folder: Path | None) -> bool:
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _holds_python(folder: Path) -> bool:
    """Python files in the folder or one level down (a package, even without __init__.py)."""
    try:
        return any(True for _ in folder.glob("*.py")) or any(True for _ in folder.glob("*/*.py"))
    except OSError:
        return False


def _folders(parent: Path) -> list[str]:
    try:
        return [child.name for child in parent.iterdir() if child.is_dir() and not child.name.startswith(".")]
    except OSError:
        return []


def _modules_in(folders: list[str]) -> list[str]:
    """Importable names in these folders: modules, packages, and folders holding Python files."""
    names: set[str] = set()
    for folder in folders:
        names.update(info.name for info in pkgutil.iter_modules([folder]))
        names.update(name for name in _folders(Path(folder)) if name.isidentifier() and _holds_python(Path(folder) / name))
    return sorted(names)


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {str(Path(prefix) / close[0]) if prefix else close[0]!r}?"


def _module_suggestion(python_path: Path, dotted: str, missing: str) -> str:
    """'; did you mean ...?' with the whole corrected pythonFunction, or the names that are there."""
    parts = dotted.split(".")
    index = missing.count(".")
    parent = ".".join(parts[:index])
    if parent:
        try:
            folders = list(getattr(importlib.import_module(parent), "__path__", []))
        except Exception:  # noqa: BLE001 - a suggestion is best effort
            return ""
    else:
        folders = [str(python_path)]
    available = [name for name in _modules_in(folders) if name != "__main__"]
    close = difflib.get_close_matches(parts[index], available, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {'.'.join(parts[:index] + close + parts[index + 1:])!r}?"
    return f" (there: {', '.join(available)})" if available else ""


def signature_problem(signature: inspect.Signature) -> str | None:
    """Swapped or missing parameters, by name; None when the names say nothing (other names, *args)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    names = [p.name for p in parameters if p.kind in kinds]
    known = [name for name in names if name in ARGUMENTS]
    if len(known) == len(names) and len(names) < len(ARGUMENTS):
        missing = [name for name in ARGUMENTS if name not in names]
        return f"missing {', '.join(repr(name) for name in missing)}"
    misplaced = [(index, name) for index, name in enumerate(names)
                 if name in ARGUMENTS and index < len(ARGUMENTS) and ARGUMENTS[index] != name]
    if misplaced:
        named = [repr(name) for _, name in misplaced]
        return f"{', '.join(named[:-1])} and {named[-1]} are swapped" if len(named) > 1 else \
            f"{named[0]} is in position {misplaced[0][0] + 1}, where {ARGUMENTS[misplaced[0][0]]!r} is passed"
    return None


def _missing_dependency(module_name: str, missing: str) -> str:
    top = missing.split(".")[0]
    hint = f"pip install {EXAMPLE_PACKAGES[top]}, or pip install 'mlcomponent[examples]' for the examples" \
        if top in EXAMPLE_PACKAGES else f"install the package that provides {top!r}"
    return (f"importing {module_name!r} failed: it imports {missing!r}, which is not installed in this Python "
            f"({sys.executable}); {hint}")


def syntax_error_line(module_name: str, error: SyntaxError, python_path: Path) -> str:
    """``importing 'm' failed: syntax error in m.py, line 3: invalid syntax: def f(:`` — one line."""
    where = short_path(error.filename, str(python_path)) if error.filename else module_name
    code = f": {' '.join(error.text.split())}" if error.text and error.text.strip() else ""
    return (f"importing {module_name!r} failed: {type(error).__name__} in {where}, line {error.lineno}: "
            f"{error.msg}{code}")


def check_signature(function: Callable[..., Any], dotted: str) -> None:
    """The function is called positionally as inference(parameters, inputs, output_fields, model_key, model):
    its parameters are read by name, so a swapped or missing one is named."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    problem = signature_problem(signature)
    if problem is None:
        try:
            signature.bind(*ARGUMENTS)
        except TypeError as error:
            problem = str(error)
    if problem is not None:
        name = dotted.rpartition(".")[2]
        raise EntryPointError(
            f"{dotted}{signature} cannot be called as inference(parameters, inputs, output_fields, "
            f"model_key, model): {problem}; write def {name}(parameters, inputs, output_fields, model_key, "
            "model=None)") from None
    if inspect.iscoroutinefunction(function):
        raise EntryPointError(f"{dotted} is async; the inference function must be a plain function")
