"""What a docstring specification declares: tensors (inputs, outputs) and parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlcomponent.errors import shown

DATATYPES = ("FP32", "FP64", "INT32", "str", "FILE")
DATATYPE_ALIASES = {"BYTES": "str"}  # what a standard V2 client calls str
PARAMETER_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...] = (-1,)
    content_type: str | None = None
    description: str = ""
    range: tuple[float, float] | None = None
    values: tuple[Any, ...] | None = None
    optional: bool = False
    allow_nan: bool = False
    line: int = 0

    def shape_matches(self, shape: list[int] | tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def content_type_matches(self, content_type: str | None) -> bool:
        if self.content_type is None:
            return True
        if content_type is None:
            return False
        want = self.content_type.lower()
        got = content_type.split(";")[0].strip().lower()
        if want.endswith("/*"):
            return got.startswith(want[:-1])
        return got == want


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter of a primitive type."""

    name: str
    type: str
    default: Any = None
    has_default: bool = False
    description: str = ""
    range: tuple[float, float] | None = None
    values: tuple[Any, ...] | None = None
    optional: bool = False
    line: int = 0

    @property
    def required(self) -> bool:
        return not self.has_default and not self.optional

    def value_problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit this parameter, or None when it does."""
        kind = PARAMETER_TYPES[self.type]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            return f"must be of type {self.type}, got {type(value).__name__} {shown(value)}"
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            return f"{shown(value)} is outside the allowed range [{_number(self.range[0])}, {_number(self.range[1])}]"
        if self.values is not None and value not in self.values:
            return f"{shown(value)} is not one of {list(self.values)}"
        return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class BatchingSpec:
    """The docstring's ``Batching:`` section: how the function wants to be called.

    ``max_batch_size`` rows at most per merged call (1: never merge); ``max_batch_delay``
    seconds at most that a request waits for others to join it; ``numpy``: numeric inputs
    arrive as flat numpy arrays instead of lists.
    """

    max_batch_size: int = 1
    max_batch_delay: float = 0.005
    numpy: bool = False
    line: int = 0

    @property
    def merges(self) -> bool:
        return self.max_batch_size > 1


@dataclass(frozen=True)
class FunctionSpec:
    """The whole contract of one inference function."""

    summary: str = ""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    parameters: tuple[ParameterSpec, ...] = ()
    example: dict[str, Any] | None = None
    batching: BatchingSpec | None = None
    declared: bool = False
    source: str | None = None
    # Derived lookups (not init fields): built anew by each __init__, so ``dataclasses.replace``
    # never shares them between two specs.
    inputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    outputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    parameters_by_name: dict[str, ParameterSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs_by_name", {t.name: t for t in self.inputs})
        object.__setattr__(self, "outputs_by_name", {t.name: t for t in self.outputs})
        object.__setattr__(self, "parameters_by_name", {p.name: p for p in self.parameters})

    @property
    def merges(self) -> bool:
        """Whether concurrent requests may be merged into one call (``Batching:`` with a size over 1)."""
        return self.batching is not None and self.batching.merges

    @property
    def numpy(self) -> bool:
        """Whether numeric inputs reach the function as flat numpy arrays (``Batching: data: numpy``)."""
        return self.batching is not None and self.batching.numpy

    def batching_problem(self) -> tuple[str, int] | None:
        """Why requests cannot be merged for this function (message, docstring line), or None:
        a merging function's tensors have the batch as their first dimension (FILE: one file per row)."""
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            for tensor in tensors:
                if tensor.datatype == "FILE":
                    ok = tensor.shape in ((1,), (-1,))
                    want = "shape=[1] (one file per request; a batch gets a list of paths)"
                else:
                    ok = bool(tensor.shape) and tensor.shape[0] == -1
                    want = "a first dimension of -1 (the batch: any number of rows)"
                if not ok:
                    return (f"Batching: {kind} {tensor.name!r} has shape {list(tensor.shape)}; a function that "
                            f"merges requests needs {want}", tensor.line)
        return None

    @property
    def default_outputs(self) -> list[TensorSpec]:
        return [t for t in self.outputs if not t.optional]


UNDECLARED = FunctionSpec()
