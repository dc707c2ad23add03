"""Tensor data checks shared by requests and function outputs: flatten, shape, datatype.

Each check returns a message (or None) so the caller decides whose fault it is:
the client's (400) for inputs, the function's (500) for outputs.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from typing import Any

from mlcomponent.errors import shown
from mlcomponent.protocol.packed import Packed, bounds, nonfinite_index, packed_problem, remember_checked
from mlcomponent.spec.model import DATATYPE_ALIASES, DATATYPES

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FP32_MAX = 3.4028234663852886e38


def canonical_datatype(datatype: Any) -> str | None:
    """Our name for a wire datatype, or None when it is not one we serve."""
    if not isinstance(datatype, str):
        return None
    datatype = DATATYPE_ALIASES.get(datatype, datatype)
    return datatype if datatype in DATATYPES else None


def flatten_with_kinds(data: Any) -> tuple[Any, set[type]]:
    """Row-major flattening of nested lists (a flat list is returned as it is, checked at C speed),
    and the set of its elements' types, computed once and reused by the value checks.
    A ``Packed`` tensor is flat already and is returned as it is."""
    if type(data) is Packed:
        return data, {Packed}
    if not isinstance(data, list):
        return [data], {type(data)}
    kinds = set(map(type, data))
    if list not in kinds:
        return data, kinds
    flat = _flatten_nested(data)
    return flat, set(map(type, flat))


def _flatten_nested(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def count_problem(shape: list[int], data: Any) -> str | None:
    """Why ``data`` cannot fill ``shape`` (row-major), or None."""
    expected = math.prod(shape)
    if len(data) != expected:
        return f"shape {shown(shape)} needs {expected} elements, data has {len(data)}"
    return None


def shape_problem(shape: Any) -> str | None:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return f"shape must be a list of non-negative integers, got {shown(shape)}"
    return None


NUMBER_KINDS = frozenset({int, float})
TYPED_CHECK_MIN = 512  # shorter lists: sum, min and max cost less than making a typed array


def values_problem(datatype: str, data: Any, allow_nan: bool = False,
                   kinds: set[type] | None = None) -> str | None:
    """Why the flat ``data`` does not fit ``datatype``, or None.

    The common case (everything fine) is decided with C-speed builtins over the whole
    list (``set(map(type, ...))``, ``min``, ``max``, ``sum``); only a list that fails
    them is walked element by element to name the first bad one. A ``Packed`` tensor is
    checked on its bytes (``packed_problem``), never element by element.
    """
    if type(data) is Packed:
        if data.datatype == datatype:
            return packed_problem(data, allow_nan)
        data = data.tolist()
        kinds = None
    if not data or datatype == "FILE":
        return None
    if kinds is None:
        kinds = set(map(type, data))
    if datatype == "str":
        return None if kinds == {str} else _first_problem(datatype, data, allow_nan)
    if datatype == "INT32":
        if kinds == {int} and min(data) >= INT32_MIN and max(data) <= INT32_MAX:
            return None
        return _first_problem(datatype, data, allow_nan)
    if kinds <= NUMBER_KINDS:
        fits = _numbers_fit(datatype, data) if len(data) >= TYPED_CHECK_MIN else None
        if fits is None:  # short, or an int too large for a double: sum, min and max of the numbers decide
            total = sum(data)
            fits = total - total == 0 and (datatype == "FP64" or (-FP32_MAX <= min(data) and max(data) <= FP32_MAX))
        if fits:
            return None
    return _first_problem(datatype, data, allow_nan)


_FP32_MAX_BYTES = (struct.pack("<f", FP32_MAX), struct.pack("<f", -FP32_MAX))


def _numbers_fit(datatype: str, data: list[Any]) -> bool | None:
    """Whether every int or float of ``data`` is a finite ``datatype`` value: one C-speed conversion
    to a typed array and a scan of its exponent bits (``sum``, ``min`` and ``max`` over the list
    took three passes of Python numbers). False means "look element by element", not "wrong";
    None: an int too large to convert."""
    try:
        values = array("f" if datatype == "FP32" else "d", data)
    except OverflowError:  # an int too large for a double
        return None
    if sys.byteorder == "big":
        values.byteswap()
    if nonfinite_index(Packed(datatype, values)) is not None:
        return False  # NaN or inf in the list, or (FP32) a value past its range
    if datatype == "FP32":
        raw = values.tobytes()  # ±FP32_MAX may be a rounded value just past it: the exact check decides
        if any(raw.find(edge) >= 0 for edge in _FP32_MAX_BYTES):
            return False
    remember_checked(data, values)
    return True


def min_max(data: Any) -> tuple[Any, Any]:
    """The smallest and largest element of a non-empty flat tensor (list or ``Packed``)."""
    if type(data) is Packed:
        return bounds(data)
    return min(data), max(data)


def _first_problem(datatype: str, data: list[Any], allow_nan: bool) -> str | None:
    if datatype == "str":
        for index, value in enumerate(data):
            if type(value) is not str:
                return f"element {index} is {shown(value)}, not a string (str)"
        return None
    if datatype == "INT32":
        for index, value in enumerate(data):
            if type(value) is not int:
                return f"element {index} is {shown(value)}, not an integer (INT32)"
            if not INT32_MIN <= value <= INT32_MAX:
                return f"element {index} = {shown(value)} is out of INT32 range [{INT32_MIN}, {INT32_MAX}]"
        return None
    limit = FP32_MAX if datatype == "FP32" else math.inf
    for index, value in enumerate(data):
        kind = type(value)
        if kind is not float and kind is not int:
            return f"element {index} is {shown(value)}, not a number ({datatype})"
        if not (-limit <= value <= limit):
            if value != value or math.isinf(value):
                if allow_nan:
                    continue
                return f"element {index} is {shown(value)}; {datatype} values must be finite"
            return f"element {index} = {shown(value)} overflows {datatype}"
    return None
