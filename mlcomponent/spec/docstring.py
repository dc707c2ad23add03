"""Parse the docstring specification of an inference function.

The format (see docs/docstring-spec.md) is four optional sections, Google-style::

    Inputs:
        image (FILE, shape=[1], content_type=image/png): a photo of one digit.
    Outputs:
        label (INT32, shape=[1]): the digit.
    Parameters:
        top_k (int, default=3, range=[1, 10]): how many classes to list.
    Example:
        inputs:
          image: digit.png
        parameters:
          top_k: 1

Parsing reads only the docstring text: no user code runs beyond the import.
Every error names the line of the docstring (and of the source file when known).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

import yaml

from mlcomponent.spec.model import (
    DATATYPE_ALIASES,
    DATATYPES,
    PARAMETER_TYPES,
    BatchingSpec,
    FunctionSpec,
    ParameterSpec,
    TensorSpec,
)
from mlcomponent.yamlsafe import MAX_NODES, over_cap

SECTION_NAMES = ("inputs", "outputs", "parameters", "example", "batching")
BATCHING_KEYS = ("max_batch_size", "max_batch_delay", "data")
_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_ENTRY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)\s*\((?P<attrs>.*)\)\s*:\s*(?P<desc>.*)$")
TENSOR_FLAGS = {"optional", "nan"}
TENSOR_KEYS = {"shape", "content_type", "range", "values"}
PARAMETER_FLAGS = {"optional"}
PARAMETER_KEYS = {"default", "range", "values"}


class DocstringSpecError(ValueError):
    """A docstring specification that cannot be parsed; names the line at fault."""

    def __init__(self, message: str, line: int, source_line: int | None = None) -> None:
        where = f"docstring line {line}" + (f" (source line {source_line})" if source_line else "")
        super().__init__(f"{where}: {message}")
        self.line = line


def docstring_lines(doc: str) -> list[str]:
    """Docstring lines with the common indent removed, keeping line numbering intact."""
    lines = doc.expandtabs().split("\n")
    rest = textwrap.dedent("\n".join(lines[1:])).split("\n") if len(lines) > 1 else []
    return [lines[0].strip()] + rest


def _split_attrs(text: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _range(value: Any, fail: Callable[[str], Exception]) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or value[0] > value[1]
    ):
        raise fail("range must be [low, high] with two numbers, low <= high")
    return float(value[0]), float(value[1])


def _attributes(text: str, flags: set[str], keys: set[str], fail: Callable[[str], Exception]) -> tuple[str, dict[str, Any]]:
    parts = _split_attrs(text)
    if not parts or "=" in parts[0]:
        raise fail("the first item in parentheses must be the type, e.g. (FP32, shape=[-1])")
    found: dict[str, Any] = {}
    for part in parts[1:]:
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq:
            if key not in flags:
                raise fail(f"unknown flag {key!r}; flags are: {', '.join(sorted(flags))}")
            found[key] = True
            continue
        if key not in keys:
            raise fail(f"unknown attribute {key!r}; attributes are: {', '.join(sorted(keys))}")
        found[key] = _scalar(raw.strip())
    return parts[0].strip(), found


def _tensor(name: str, attrs: str, desc: str, line: int, fail: Callable[[str], Exception]) -> TensorSpec:
    datatype, found = _attributes(attrs, TENSOR_FLAGS, TENSOR_KEYS, fail)
    datatype = DATATYPE_ALIASES.get(datatype, datatype)
    if datatype not in DATATYPES:
        raise fail(f"unknown datatype {datatype!r} for {name!r}; use one of {', '.join(DATATYPES)}")
    shape = found.get("shape", [1] if datatype == "FILE" else [-1])
    if not isinstance(shape, list) or not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d >= 0) for d in shape
    ):
        raise fail(f"shape of {name!r} must be a list of sizes, -1 for any size, e.g. [-1, 4]")
    content_type = found.get("content_type")
    if content_type is not None and datatype != "FILE":
        raise fail(f"content_type applies to FILE only, and {name!r} is {datatype}")
    values = found.get("values")
    if values is not None and not isinstance(values, list):
        raise fail("values must be a list, e.g. values=[a, b]")
    return TensorSpec(
        name=name,
        datatype=datatype,
        shape=tuple(shape),
        content_type=str(content_type) if content_type is not None else None,
        description=desc,
        range=_range(found["range"], fail) if "range" in found else None,
        values=tuple(values) if values is not None else None,
        optional=bool(found.get("optional")),
        allow_nan=bool(found.get("nan")),
        line=line,
    )


def _parameter(name: str, attrs: str, desc: str, line: int, fail: Callable[[str], Exception]) -> ParameterSpec:
    kind, found = _attributes(attrs, PARAMETER_FLAGS, PARAMETER_KEYS, fail)
    if kind not in PARAMETER_TYPES:
        raise fail(f"unknown parameter type {kind!r} for {name!r}; use one of {', '.join(PARAMETER_TYPES)}")
    spec = ParameterSpec(
        name=name,
        type=kind,
        default=found.get("default"),
        has_default="default" in found,
        description=desc,
        range=_range(found["range"], fail) if "range" in found else None,
        values=tuple(found["values"]) if isinstance(found.get("values"), list) else None,
        optional=bool(found.get("optional")),
        line=line,
    )
    if "values" in found and spec.values is None:
        raise fail("values must be a list, e.g. values=[a, b]")
    if spec.has_default:
        problem = spec.value_problem(spec.default)
        if problem:
            raise fail(f"default of {name!r}: {problem}")
    return spec


Section = list[tuple[int, str]]  # (docstring line number, text) of one section's body
Entry = tuple[int, str, str, str]  # (line number, name, attributes, description)


def parse_docstring(doc: str | None, first_source_line: int | None = None) -> FunctionSpec:
    """Parse a docstring; a docstring without Inputs/Outputs sections declares nothing."""
    if not doc:
        return FunctionSpec()
    lines = docstring_lines(doc)
    sections = _sections(lines, first_source_line)
    if not sections:
        return FunctionSpec(summary=lines[0])
    inputs = _build(sections, "inputs", _tensor, first_source_line)
    outputs = _build(sections, "outputs", _tensor, first_source_line)
    parameters = _build(sections, "parameters", _parameter, first_source_line)
    example = _example(sections.get("example"), first_source_line)
    batching = _batching(sections.get("batching"), first_source_line)
    spec = FunctionSpec(summary=lines[0], inputs=inputs, outputs=outputs, parameters=parameters,
                        example=example, batching=batching, declared=True)
    if batching is not None and batching.merges:
        _check_batchable(spec, first_source_line)
    if example is not None:
        _check_example(spec, example, sections["example"][0][0], first_source_line)
    return spec


def _sections(lines: list[str], first_source_line: int | None) -> dict[str, Section]:
    """The body of each known section (``Inputs:`` ... up to the next unindented line)."""
    sections: dict[str, Section] = {}
    current: str | None = None
    for number, line in enumerate(lines, start=1):
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            name = header.group(1).strip().lower()
            current = name if name in SECTION_NAMES else None
            if current is None:
                _check_unknown_header(header.group(1).strip(), number, first_source_line)
            if current is not None:
                if current in sections:
                    raise _error(f"section {header.group(1)!r} appears twice", number, first_source_line)
                sections[current] = []
            continue
        if line and not line.startswith(" "):
            current = None
        if current is not None:
            sections[current].append((number, line))
    return sections


def _check_unknown_header(header: str, number: int, first_source_line: int | None) -> None:
    """``Input:`` over an indented block: a misspelled section (would silently declare nothing).

    Prose headers (``Note:``, ``Returns:``) stay allowed; only one close to a section name fails.
    """
    close = difflib.get_close_matches(header.lower(), SECTION_NAMES, n=1, cutoff=0.75)
    if close:
        raise _error(f"unknown section {header + ':'!r}; did you mean {close[0].capitalize() + ':'!r}? "
                     f"(sections are: {', '.join(n.capitalize() + ':' for n in SECTION_NAMES)})",
                     number, first_source_line)


def _entries(body: Section, kind: str, first_source_line: int | None) -> list[Entry]:
    """``name (attrs): description`` entries; deeper-indented lines continue the description."""
    found: list[Entry] = []
    indent = min((len(t) - len(t.lstrip()) for _, t in body if t.strip()), default=0)
    for number, text in body:
        if not text.strip():
            continue
        if len(text) - len(text.lstrip()) > indent and found:
            n, name, attrs, desc = found[-1]
            found[-1] = (n, name, attrs, (desc + " " + text.strip()).strip())
            continue
        match = _ENTRY.match(text.strip())
        if not match:
            raise _error(f"cannot read {text.strip()!r} in {kind.capitalize()}; write "
                         "`name (TYPE, key=value, ...): description`", number, first_source_line)
        found.append((number, match["name"], match["attrs"], match["desc"].strip()))
    return found


def _build(sections: dict[str, Section], kind: str, make: Callable[..., Any],
           first_source_line: int | None) -> tuple[Any, ...]:
    built, names = [], set()
    for number, name, attrs, desc in _entries(sections.get(kind, []), kind, first_source_line):
        def fail(message: str, number: int = number) -> DocstringSpecError:
            return _error(message, number, first_source_line)
        if name in names:
            raise fail(f"{name!r} is declared twice in {kind.capitalize()}")
        names.add(name)
        built.append(make(name, attrs, desc, number, fail))
    return tuple(built)


def _error(message: str, line: int, first_source_line: int | None) -> DocstringSpecError:
    source = first_source_line + line - 1 if first_source_line else None
    return DocstringSpecError(message, line, source)


def _example(body: list[tuple[int, str]] | None, first_source_line: int | None) -> dict[str, Any] | None:
    if not body or not any(text.strip() for _, text in body):
        return None
    start = body[0][0]
    data = _yaml_section(body, "Example", first_source_line)
    if not isinstance(data, dict) or not set(data) <= {"inputs", "parameters"}:
        raise _error("Example must be a mapping with `inputs:` (name: value) and optionally `parameters:`",
                     start, first_source_line)
    for key in ("inputs", "parameters"):
        if not isinstance(data.get(key) or {}, dict):
            raise _error(f"Example {key} must map names to values", start, first_source_line)
    return {"inputs": data.get("inputs") or {}, "parameters": data.get("parameters") or {}}


def _load_capped(text: str) -> tuple[Any, bool]:
    """``yaml.safe_load``, refusing (False) what anchors and aliases expand past the manifest's cap."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and over_cap(node):
            return None, False
        return (loader.construct_document(node) if node is not None else None), True
    finally:
        loader.dispose()


def _yaml_section(body: Section, name: str, first_source_line: int | None) -> Any:
    start = body[0][0]
    try:
        data, within_cap = _load_capped(textwrap.dedent("\n".join(text for _, text in body)))
        if not within_cap:
            raise _error(f"{name} has more than {MAX_NODES:,} values once anchors and aliases are expanded; keep "
                         "it small (a few rows) and write it out in full", start, first_source_line)
        return data
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        last = max(number for number, text in body if text.strip())
        line = min(start + mark.line, last) if mark else start
        raise _error(f"{name} is not valid YAML: {getattr(error, 'problem', error)}", line, first_source_line) from None


def milliseconds(value: Any) -> float | None:
    """``5``, ``5ms``, ``0.5 ms`` or ``1s`` as seconds; None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / 1000 if value >= 0 else None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", value)
        if match:
            number = float(match.group(1))
            return number if match.group(2) == "s" else number / 1000
    return None


def _batching(body: Section | None, first_source_line: int | None) -> BatchingSpec | None:
    """``Batching:`` as a YAML mapping: max_batch_size, max_batch_delay (ms), data (lists or numpy)."""
    if not body or not any(text.strip() for _, text in body):
        return None
    start = body[0][0]
    data = _yaml_section(body, "Batching", first_source_line)

    def fail(message: str) -> DocstringSpecError:
        return _error(f"Batching: {message}", start, first_source_line)

    if not isinstance(data, dict):
        raise fail("must be a mapping, e.g. `max_batch_size: 32`, `max_batch_delay: 5` (ms), `data: numpy`")
    unknown = [key for key in data if key not in BATCHING_KEYS]
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; keys are: {', '.join(BATCHING_KEYS)}")
    size = data.get("max_batch_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise fail(f"max_batch_size must be a whole number of rows, at least 1, got {size!r}")
    delay = milliseconds(data.get("max_batch_delay", 5))
    if delay is None:
        raise fail(f"max_batch_delay must be milliseconds (a number, or e.g. 5ms, 0.1s), got {data['max_batch_delay']!r}")
    mode = data.get("data", "lists")
    if mode not in ("lists", "numpy"):
        raise fail(f"data must be `lists` (the default) or `numpy`, got {mode!r}")
    return BatchingSpec(max_batch_size=size, max_batch_delay=delay, numpy=mode == "numpy", line=start)


def _check_batchable(spec: FunctionSpec, first_source_line: int | None) -> None:
    problem = spec.batching_problem()
    if problem is not None:
        raise _error(problem[0], problem[1], first_source_line)


def _check_example(spec: FunctionSpec, example: dict[str, Any], line: int, first: int | None) -> None:
    for name in example["inputs"]:
        if name not in spec.inputs_by_name:
            raise _error(f"Example input {name!r} is not declared in Inputs", line, first)
    for name, value in example["parameters"].items():
        declared = spec.parameters_by_name.get(name)
        if declared is None:
            raise _error(f"Example parameter {name!r} is not declared in Parameters", line, first)
        problem = declared.value_problem(value)
        if problem:
            raise _error(f"Example parameter {name!r}: {problem}", line, first)


def docstring_first_line(function: Callable[..., Any]) -> int | None:
    """The source line where the function's docstring starts, when the source is readable."""
    try:
        source, start = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(source)))
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            return start + first.lineno - 1
    return None


def spec_of(function: Callable[..., Any]) -> FunctionSpec:
    """The function's spec, remembering its source file (Example files are relative to it)."""
    import dataclasses

    spec = parse_docstring(function.__doc__, docstring_first_line(function))
    try:
        source = inspect.getfile(function)
    except TypeError:
        return spec
    return dataclasses.replace(spec, source=source)
