"""The MLComponent manifest: one pydantic model that is both ``validate`` and the CRD schema.

Field rules that a JSON schema can express (patterns, required fields, unknown
fields) live on the models; rules that relate fields to each other (a ``fileBox``
that names a connected box, duplicate box names) live in ``cross_field_problems``
so that they can be reported with the YAML path of the field at fault.
"""

from __future__ import annotations

import difflib
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mlcomponent.errors import ManifestError
from mlcomponent.yamlsafe import MAX_NODES, over_cap

API_GROUP = "unified-platform.cs.hse.ru"
API_VERSION = f"{API_GROUP}/v1"
KIND = "MLComponent"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource quantity: a decimal number with an optional binary (Ki..Ei),
# decimal (n, u, m, k, M..E) or exponent suffix.
QUANTITY = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
DOTTED_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
ABSOLUTE_PATH = r"^/.*$"
# A relative path inside a box: segments of anything but '/', '\\' and control characters, none
# of them '.' or '..', no empty ones; an optional trailing '/'; empty means the whole box.
# RE2-compatible (no look-ahead), since the API server checks the CRD's patterns too.
_SEGMENT = r"(?:[^/.\\\x00-\x1f][^/\\\x00-\x1f]*|\.[^/.\\\x00-\x1f][^/\\\x00-\x1f]*|\.\.[^/\\\x00-\x1f]+)"
BOX_SUB_PATH = rf"^(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?$"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, str_max_length=1024
    )


class ResourceLimits(_Model):
    cpu: str | None = Field(None, pattern=QUANTITY, description="CPU limit in cores, e.g. 500m.")
    memory: str | None = Field(
        None, pattern=QUANTITY, description="Memory limit as a Kubernetes quantity, e.g. 256M."
    )


class Image(_Model):
    existing_image_name: str = Field(
        min_length=1, description="The container image the component runs in."
    )
    resource_limits: ResourceLimits | None = Field(None, description="Resource limits.")


class EnvVar(_Model):
    name: str = Field(pattern=ENV_NAME, description="Environment variable name.")
    value: str = Field("", description="Its value (a string; quote numbers in YAML).")


class FileExchange(_Model):
    file_box: str = Field(min_length=1, description="Name of the connected box for user files.")
    inference_files_path: str = Field(
        pattern=ABSOLUTE_PATH, description="Folder where per-request files are written."
    )


class ModelSource(_Model):
    model_box: str = Field(min_length=1, description="Name of the connected box holding the model.")
    model_path: str = Field(
        pattern=ABSOLUTE_PATH, description="Path of the model file or folder; passed as model_key."
    )


class EntryPoint(_Model):
    python_path: str = Field(".", description="Folder added to sys.path, relative to the module root.")
    python_function: str = Field(
        pattern=DOTTED_NAME, description="Dotted name of the inference function, e.g. pkg.mod.inference."
    )


class Inference(_Model):
    file_exchange: FileExchange
    model: ModelSource
    entry_point: EntryPoint


class MLService(_Model):
    package_registry_name: str = Field(
        min_length=1, description="Name of the Python package index mlcomponent is installed from."
    )
    inference: Inference


class MountS3Box(_Model):
    s3_box_name: str = Field(min_length=1, description="The platform box (S3 bucket) to mount.")
    sub_path: str = Field("", pattern=BOX_SUB_PATH,
                          description="Folder inside the box that appears at the box's path (relative, no '..').")


class CopyS3Box(_Model):
    s3_box_name: str = Field(min_length=1, description="The platform box (S3 bucket) to copy from.")


class ConnectedBox(_Model):
    name: str = Field(pattern=DNS1123_LABEL, max_length=63, description="Name used by modelBox/fileBox.")
    path: str | None = Field(
        None, pattern=ABSOLUTE_PATH, description="Where a mounted box appears in the container."
    )
    mount_s3_box: MountS3Box | None = None
    copy_s3_box: CopyS3Box | None = None

    @property
    def s3_box_name(self) -> str:
        source = self.mount_s3_box or self.copy_s3_box
        assert source is not None, "validated: exactly one of mountS3Box/copyS3Box"
        return source.s3_box_name


class Spec(_Model):
    image: Image
    env: list[EnvVar] = Field(default_factory=list)
    ml_service: MLService
    connected_boxes: list[ConnectedBox] = Field(min_length=1)


class Metadata(_Model):
    name: str = Field(pattern=DNS1123_LABEL, max_length=63, description="The component's name.")
    namespace: str | None = Field(None, pattern=DNS1123_LABEL, max_length=63)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class Manifest(_Model):
    api_version: Literal["unified-platform.cs.hse.ru/v1"]
    kind: Literal["MLComponent"]
    metadata: Metadata
    spec: Spec

    def box(self, name: str) -> ConnectedBox:
        return next(b for b in self.spec.connected_boxes if b.name == name)

    @property
    def inference(self) -> Inference:
        return self.spec.ml_service.inference


# --------------------------------------------------------------------------- checks


Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str


def _is_under(path: str, folder: str) -> bool:
    path, folder = posixpath.normpath(path), posixpath.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def cross_field_problems(data: dict[str, Any]) -> list[Problem]:
    """Rules that relate fields to each other; each problem points at the field to fix.

    Works on the raw mapping (defensively), so these problems are reported together
    with the per-field ones instead of only after those are fixed.
    """
    boxes = _get(data, "spec", "connectedBoxes")
    boxes = [b if isinstance(b, dict) else {} for b in boxes] if isinstance(boxes, list) else []
    return (_nul_problems(data, ()) + _env_problems(_get(data, "spec", "env")) + _box_problems(boxes)
            + _box_reference_problems(data, boxes) + _model_box_problems(data, boxes))


def _env_problems(env: Any) -> list[Problem]:
    problems: list[Problem] = []
    seen_env: dict[str, int] = {}
    for index, item in enumerate(env if isinstance(env, list) else []):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in seen_env:
            problems.append(Problem(("spec", "env", index, "name"), f"duplicate env name {name!r} "
                                    f"(also env[{seen_env[name]}]); Kubernetes refuses a name given twice"))
        if isinstance(name, str):
            seen_env.setdefault(name, index)
    return problems


def _box_problems(boxes: list[dict[str, Any]]) -> list[Problem]:
    """Each box on its own: a unique name, exactly one of mount and copy, a path when mounted."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, box in enumerate(boxes):
        loc: Loc = ("spec", "connectedBoxes", index)
        name = box.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(Problem(loc + ("name",), f"duplicate box name {name!r} "
                                    f"(also connectedBoxes[{seen[name]}]); give each box its own name"))
        if isinstance(name, str):
            seen.setdefault(name, index)
        mount, copy = box.get("mountS3Box"), box.get("copyS3Box")
        if (mount is None) == (copy is None):
            which = "both" if mount is not None else "neither"
            problems.append(Problem(loc, f"box {name!r} has {which} of mountS3Box and copyS3Box; "
                                    "give exactly one"))
        if mount is not None and box.get("path") is None:
            problems.append(Problem(loc + ("path",), f"box {name!r} uses mountS3Box and needs "
                                    "`path`, the folder where it appears"))
    return problems


_INFERENCE: tuple[str, ...] = ("spec", "mlService", "inference")


def _box_reference_problems(data: dict[str, Any], boxes: list[dict[str, Any]]) -> list[Problem]:
    """fileBox and modelBox name a connected box."""
    problems: list[Problem] = []
    names: list[str] = [b["name"] for b in boxes if isinstance(b.get("name"), str)]
    for section, field in (("fileExchange", "fileBox"), ("model", "modelBox")):
        ref = _get(data, *_INFERENCE, section, field)
        if isinstance(ref, str) and ref not in names:
            problems.append(Problem(_INFERENCE + (section, field),
                                    f"{ref!r} names no entry of spec.connectedBoxes "
                                    f"(known: {', '.join(names) or 'none'}){_did_you_mean(ref, names)}"))
    return problems


def _model_box_problems(data: dict[str, Any], boxes: list[dict[str, Any]]) -> list[Problem]:
    """The model box is mounted, and modelPath lies inside it."""
    inference_loc = _INFERENCE
    model_box = next((b for b in boxes if b.get("name") == _get(data, *inference_loc, "model", "modelBox")), None)
    model_path = _get(data, *inference_loc, "model", "modelPath")
    if model_box is None:
        return []
    if model_box.get("copyS3Box") is not None and model_box.get("mountS3Box") is None:
        return [Problem(inference_loc + ("model", "modelBox"),
                        f"model box {model_box.get('name')!r} must be a mountS3Box with a path, "
                        "so that modelPath has a place to resolve to")]
    if isinstance(model_path, str) and isinstance(model_box.get("path"), str):
        if not _is_under(model_path, model_box["path"]):
            return [Problem(inference_loc + ("model", "modelPath"),
                            f"{model_path!r} is not under the model box's path "
                            f"{model_box['path']!r}; the model must live inside its box")]
    return []


def _nul_problems(data: Any, loc: Loc) -> list[Problem]:
    """A NUL character fits in YAML ("\\0") but in no environment variable, path or name."""
    if isinstance(data, str):
        return [Problem(loc, "contains a NUL character (\\0), which no name, path or environment "
                        "value can hold; remove it")] if "\0" in data else []
    if isinstance(data, dict):
        return [p for key, value in data.items()
                for p in _nul_problems(key, loc + (str(key),)) + _nul_problems(value, loc + (str(key),))]
    if isinstance(data, list):
        return [p for index, item in enumerate(data) for p in _nul_problems(item, loc + (index,))]
    return []


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------- YAML + errors


def _line_map(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map every YAML path in a composed document to its 1-based line."""
    out = {} if out is None else out
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (str(key.value),)
            _line_map(value, child, out)
            out[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, loc + (index,), out)
    return out


def _duplicate_keys(node: yaml.Node, loc: Loc = ()) -> list[str]:
    """``line N: path: duplicate key`` for each key given twice in one mapping (kubectl refuses them)."""
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in first:
                found.append(f"{line}: {format_loc(loc + (name,))}: duplicate key {name!r} (first on line "
                             f"{first[name]}); the later one would win here, and kubectl refuses the file: "
                             "keep one")
            first.setdefault(name, line)
            found += _duplicate_keys(value, loc + (name,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, loc + (index,))
    return found


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The aliases allowed at ``loc``'s parent, walking the model tree (for did-you-mean)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = _unwrap(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        inner = _unwrap(arg)
        if inner is not None:
            return inner
    return annotation if isinstance(annotation, type) else None


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc: Loc = tuple(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(Manifest, loc)
            message = f"unknown field {loc[-1]!r}{_did_you_mean(str(loc[-1]), allowed)}"
            if allowed:
                message += f" (allowed here: {', '.join(allowed)})"
        elif kind == "literal_error":
            message = f"must be {item['ctx']['expected']}, got {item['input']!r}"
        elif kind == "string_pattern_mismatch":
            message = f"{item['input']!r} is not {_PATTERN_NAMES.get(item['ctx']['pattern'], 'valid')}"
        elif kind == "missing":
            message = "is required but missing"
        else:
            message = item["msg"].lower()
        problems.append(Problem(loc, message))
    return problems


_PATTERN_NAMES = {
    DNS1123_LABEL: "a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
    "with a letter or digit, at most 63 characters)",
    QUANTITY: "a Kubernetes quantity (e.g. 500m or 2 for cpu, 256M or 1Gi for memory)",
    ENV_NAME: "a valid environment variable name (letters, digits and '_', not starting with a digit)",
    DOTTED_NAME: "a dotted Python name such as package.module.inference",
    ABSOLUTE_PATH: "an absolute path (starting with '/')",
    BOX_SUB_PATH: "a relative path inside the box (no leading '/', no '.', '..' or empty segments, no '\\')",
}


def problems_of(data: Any) -> tuple[Manifest | None, list[Problem]]:
    """Validate already-parsed manifest data; returns the model when there are no problems."""
    if not isinstance(data, dict):
        return None, [Problem((), "a manifest must be a YAML mapping with apiVersion, kind, metadata, spec")]
    manifest: Manifest | None = None
    try:
        manifest = Manifest.model_validate(data)
        problems = []
    except ValidationError as error:
        problems = _pydantic_problems(error)
    problems += cross_field_problems(data)
    return (None if problems else manifest), problems


MAX_BYTES = 1024 * 1024  # Kubernetes keeps objects under 1.5 MB; a manifest is a few hundred bytes
MAX_DEPTH = 32  # the deepest field of a manifest is 6 levels down


class _Refused(Exception):
    """A manifest refused before it is validated: too large, too deep, or expanding too far."""


class _ManifestLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """PyYAML's safe loader, with a limit on nesting (a 100,000-deep file would overflow the stack)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"line {line}: nested deeper than {MAX_DEPTH} levels; a manifest is 6 levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with the line and column first."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        context = f" ({error.context})" if error.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}{context}"
    if isinstance(error, yaml.reader.ReaderError):
        return f"character {error.position + 1}: {error.reason}"
    return " ".join(str(error).split())


def _load_yaml(text: str, duplicates: list[str] | None = None) -> tuple[Any, dict[Loc, int]]:
    """One YAML document: its data and the line of every path. Raises _Refused or yaml.YAMLError.

    Keys given twice in one mapping are added to ``duplicates`` (``line: path: message``).
    """
    loader = _ManifestLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        if over_cap(node):
            raise _Refused(f"anchors and aliases expand it past {MAX_NODES:,} values "
                           "(a \"billion laughs\" file?); write the manifest out in full")
        if duplicates is not None:
            duplicates += _duplicate_keys(node)
        return loader.construct_document(node), _line_map(node)
    finally:
        loader.dispose()


def parse_manifest_text(text: str, source: str = "manifest") -> Manifest:
    """Parse and validate; raises ManifestError with one line per problem, naming path and line."""
    duplicates: list[str] = []
    try:
        data, lines = _load_yaml(text, duplicates)
    except yaml.YAMLError as error:
        raise ManifestError([f"{source}: not valid YAML: {_yaml_problem(error)}"]) from None
    except _Refused as error:
        raise ManifestError([f"{source}: refused: {error}"]) from None
    except ValueError as error:  # e.g. an integer of more than 4,300 digits, or the date 2024-13-45
        reason = " ".join(str(error).split()).split("; use sys.")[0]
        raise ManifestError([f"{source}: refused: a value cannot be read: {reason}"]) from None
    if duplicates:
        raise ManifestError([f"{source}:{line}" for line in duplicates])
    manifest, problems = problems_of(data)
    if problems:
        raise ManifestError([_describe(source, p, lines) for p in problems])
    assert manifest is not None
    return manifest


def _describe(source: str, problem: Problem, lines: dict[Loc, int]) -> str:
    loc = problem.loc
    while loc not in lines and loc:
        loc = loc[:-1]
    line = lines.get(loc)
    where = f"{source}:{line}" if line else source
    return f"{where}: {format_loc(problem.loc)}: {problem.message}"


def read_manifest_text(path: str | Path) -> str:
    """The file's text, or a ManifestError that says in one line why it cannot be read."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError([f"{path}: no such file; give the path of a manifest (mlcomponent.yaml)"]) from None
    except IsADirectoryError:
        raise ManifestError([f"{path}: is a folder; give the manifest file in it, e.g. {path / 'mlcomponent.yaml'}"]) from None
    except OSError as error:
        raise ManifestError([f"{path}: cannot read the manifest: {error.strerror or error}"]) from None
    if len(raw) > MAX_BYTES:
        raise ManifestError([f"{path}: refused: larger than {MAX_BYTES // 1024} KiB; a manifest is a few hundred bytes"])
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise ManifestError([f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
                             "save the manifest as UTF-8"]) from None


def locate(path: str | Path, loc: Loc) -> str:
    """``file:line: yaml.path`` for a field of a manifest already read (the file alone if it has moved)."""
    try:
        _, lines = _load_yaml(read_manifest_text(path))
    except (ManifestError, _Refused, yaml.YAMLError, ValueError):
        lines = {}
    return _describe(str(path), Problem(loc, ""), lines).removesuffix(": ")


def load_manifest(path: str | Path) -> Manifest:
    return parse_manifest_text(read_manifest_text(path), str(path))
