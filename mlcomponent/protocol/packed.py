"""Numeric tensors kept as raw little-endian bytes: large tensors at memory speed.

A ``Packed`` holds a flat FP32, FP64 or INT32 tensor as bytes (a slice of the request
body, a worker's reply buffer, a numpy array's memory) instead of a list of Python
numbers. The binary path never builds a list: its checks work on the whole buffer, it
crosses to the worker process as a pickle protocol 5 out-of-band buffer (no copy into
the pickle, no per-element objects), and a binary response is its bytes.

Standard library only; numpy is used when the function opts in to it (``Batching:
data: numpy``) or, for a declared ``range``, when it is installed. Without numpy every
path still works: finiteness is decided from the exponent bits with bytes operations
(C speed), ranges with ``min``/``max`` over an ``array``.
"""

from __future__ import annotations

import pickle
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from mlcomponent.errors import shown

TYPECODES = {"FP32": "f", "FP64": "d", "INT32": "i"}
NUMPY_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4"}
ITEMSIZE = {"FP32": 4, "FP64": 8, "INT32": 4}
# A list this long or longer is worth packing for the hop to the worker and back.
PACK_MIN = 4096
FP32_MAX = 3.4028234663852886e38
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_BIG_ENDIAN = sys.byteorder == "big"


def _rebuild(datatype: str, raw: Any, checked: bool) -> Packed:
    return Packed(datatype, raw, checked)


class Packed:
    """A flat numeric tensor as little-endian bytes. ``checked``: its values were already checked
    (finite, in range) by our own code in the worker, so the HTTP process need not look again."""

    __slots__ = ("datatype", "raw", "checked")

    def __init__(self, datatype: str, raw: Any, checked: bool = False) -> None:
        self.datatype = datatype
        view = raw if isinstance(raw, memoryview) else memoryview(raw)
        self.raw = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self.checked = checked

    def __len__(self) -> int:
        return self.raw.nbytes // ITEMSIZE[self.datatype]

    def __repr__(self) -> str:
        return f"Packed({self.datatype}, {len(self)} elements)"

    def __reduce_ex__(self, protocol: Any) -> Any:
        if isinstance(protocol, int) and protocol >= 5:
            return _rebuild, (self.datatype, pickle.PickleBuffer(self.raw), self.checked)
        return _rebuild, (self.datatype, self.raw.tobytes(), self.checked)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Packed):
            return self.datatype == other.datatype and self.raw == other.raw
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def array(self) -> array[Any]:
        values = array(TYPECODES[self.datatype])
        values.frombytes(self.raw)
        if _BIG_ENDIAN:
            values.byteswap()
        return values

    def __iter__(self) -> Any:
        return iter(self.array())

    def tolist(self) -> list[Any]:
        return self.array().tolist()

    def json_values(self) -> Any:
        """The values for a JSON encoder: a numpy array (orjson's ``OPT_SERIALIZE_NUMPY`` writes it
        without a Python number per element, the same text as the list) when numpy is installed,
        else the list. FP32 widens to FP64 first, as ``tolist`` does, so the text is the list's."""
        try:
            values = self.to_numpy()
        except ImportError:
            return self.tolist()
        if self.datatype == "FP32":
            return values.astype("<f8")
        return values if values.flags.aligned else values.copy()  # orjson takes aligned arrays only

    def to_numpy(self) -> Any:
        """A flat numpy array over the same memory (writable when the memory is)."""
        import numpy

        return numpy.frombuffer(self.raw, dtype=NUMPY_DTYPES[self.datatype])

    def slice(self, start: int, stop: int) -> Packed:
        size = ITEMSIZE[self.datatype]
        return Packed(self.datatype, self.raw[start * size:stop * size], self.checked)

    @classmethod
    def concat(cls, parts: list[Packed]) -> Packed:
        return cls(parts[0].datatype, b"".join(p.raw for p in parts), all(p.checked for p in parts))

    @classmethod
    def from_list(cls, datatype: str, data: list[Any]) -> Packed:
        """Pack checked numbers (INT32 values must be in range: ``array`` raises otherwise)."""
        values = array(TYPECODES[datatype], data)
        if _BIG_ENDIAN:
            values.byteswap()
        return cls(datatype, values, checked=True)


def _first_exponent_all_ones(raw: memoryview, itemsize: int, high: int, low: int, low_mask: int) -> int | None:
    """Index of the first element whose exponent bits are all ones (NaN or ±inf), or None.

    ``high`` is the byte with the sign and the exponent's top 7 bits, ``low`` the byte
    with the rest (``low_mask``). The common case (no candidate at all) is a few C-speed
    bytes operations over one byte per element, a chunk at a time (a chunk stays in the
    cache, and no buffer as large as the tensor is allocated).
    """
    step = CHUNK - CHUNK % itemsize
    for start in range(0, raw.nbytes, step):
        chunk = bytes(raw[start:start + step])  # slicing bytes with a step is far faster than a strided view
        candidates = chunk[high::itemsize].translate(_TOP7)
        index = candidates.find(1)
        if index < 0:
            continue
        lows = chunk[low::itemsize]
        while index >= 0:
            if lows[index] & low_mask == low_mask:
                return start // itemsize + index
            index = candidates.find(1, index + 1)
    return None


CHUNK = 1 << 18
_TOP7 = bytes(1 if b & 0x7F == 0x7F else 0 for b in range(256))


def nonfinite_index(packed: Packed) -> int | None:
    """The first NaN or infinity in an FP32 or FP64 tensor, or None."""
    if packed.datatype == "FP32":
        return _first_exponent_all_ones(packed.raw, 4, 3, 2, 0x80)
    if packed.datatype == "FP64":
        return _first_exponent_all_ones(packed.raw, 8, 7, 6, 0xF0)
    return None


def packed_problem(packed: Packed, allow_nan: bool) -> str | None:
    """Why the tensor's values do not fit its datatype, or None: whole-buffer checks, no list.

    FP32 and INT32 bytes cannot hold a value out of their range; FP64 neither. So the only
    question is NaN and infinity, answered from the exponent bits.
    """
    if packed.checked or allow_nan:
        return None
    index = nonfinite_index(packed)
    if index is None:
        return None
    code = "<f" if packed.datatype == "FP32" else "<d"
    (value,) = struct.unpack_from(code, packed.raw, index * ITEMSIZE[packed.datatype])
    return f"element {index} is {shown(value)}; {packed.datatype} values must be finite"


def bounds(packed: Packed) -> tuple[float, float]:
    """(min, max) of a non-empty tensor: numpy when it is installed, else ``min``/``max`` over an array."""
    try:
        values = packed.to_numpy()
    except ImportError:
        numbers = packed.array()
        return min(numbers), max(numbers)
    return values.min().item(), values.max().item()


def is_numpy_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "ravel")


def function_data(inputs: list[dict[str, Any]], numpy: bool) -> list[dict[str, Any]]:
    """Inputs as the function wants them: flat lists (the spec's default) or flat numpy arrays.

    Only the packed tensors (and, for numpy, numeric lists) change; the dicts are the
    caller's, modified in place.
    """
    for item in inputs:
        data = item.get("data")
        if isinstance(data, Packed):
            item["data"] = data.to_numpy() if numpy else data.tolist()
        elif numpy and isinstance(data, list) and item.get("datatype") in NUMPY_DTYPES:
            import numpy as np

            item["data"] = np.asarray(data, dtype=NUMPY_DTYPES[item["datatype"]])
    return inputs


# Typed arrays the value checks made of long lists (``tensors.values_problem``), kept only inside
# ``reusing_checked_arrays`` so that packing the same lists does not convert them again.
_checked: dict[int, tuple[list[Any], array[Any]]] | None = None


@contextmanager
def reusing_checked_arrays() -> Iterator[None]:
    """While decoding and packing one request (no await in between): remember checked arrays."""
    global _checked
    _checked = {}
    try:
        yield
    finally:
        _checked = None


def remember_checked(data: list[Any], values: array[Any]) -> None:
    """``values`` is ``data`` as little-endian typed values that passed the checks (see above)."""
    if _checked is not None:
        _checked[id(data)] = (data, values)


def pack_checked_lists(tensors: Iterable[Any]) -> None:
    """Long numeric lists of checked input tensors (``InputTensor``) as ``Packed``, in place: for a
    function that takes numpy arrays, the list would only be pickled to become an array anyway."""
    for tensor in tensors:
        data = tensor.data
        if type(data) is list and len(data) >= PACK_MIN and tensor.datatype in TYPECODES:
            known = _checked.get(id(data)) if _checked is not None else None
            if known is not None and known[0] is data and known[1].typecode == TYPECODES[tensor.datatype]:
                tensor.data = Packed(tensor.datatype, known[1], checked=True)
            else:
                tensor.data = Packed.from_list(tensor.datatype, data)


def _pack_array(value: Any, datatype: str, allow_nan: bool) -> Packed | None:
    """A numpy array as a checked ``Packed`` of ``datatype``, or None when any value would not
    pass (the list path then names the element at fault) or the conversion is not exact."""
    import numpy as np

    with np.errstate(all="ignore"):  # an overflowing cast is detected below, not warned about
        flat = np.ravel(value)
        kind = flat.dtype.kind
        if datatype == "INT32":
            if kind not in "iu":
                return None
            if flat.dtype != np.int32 and flat.size and (flat.min() < INT32_MIN or flat.max() > INT32_MAX):
                return None
            packed = flat.astype("<i4", copy=False)
        else:
            if kind not in "fiu":
                return None
            packed = flat.astype(NUMPY_DTYPES[datatype], copy=False)
            if not allow_nan and not np.isfinite(packed).all():
                return None
            if datatype == "FP32" and kind == "f" and flat.dtype.itemsize > 4 and \
                    bool((np.isinf(packed) & np.isfinite(flat)).any()):
                return None  # finite values too large for FP32
    return Packed(datatype, np.ascontiguousarray(packed), checked=True)


def _pack_list(value: list[Any], datatype: str, allow_nan: bool) -> Packed | None:
    """A long flat list of plain numbers as a checked ``Packed``, or None (then it travels as it is)."""
    if datatype == "FP32":
        return None  # packing would round every value to FP32 for JSON clients too; lists stay exact
    kinds = set(map(type, value))
    if datatype == "INT32":
        if kinds != {int} or min(value) < INT32_MIN or max(value) > INT32_MAX:
            return None
        return Packed.from_list(datatype, value)
    if not kinds <= {int, float}:
        return None
    total = sum(value)
    if total - total != 0 and not allow_nan:
        return None
    return Packed.from_list(datatype, value)


def pack_outputs(outputs: Any, output_fields: Iterable[dict[str, Any]], allow_nan: dict[str, bool]) -> Any:
    """The function's outputs ready to cross the pipe: numeric numpy arrays (and long FP64/INT32
    lists) as checked ``Packed`` buffers, everything else as plain values."""
    from mlcomponent.protocol.plain import as_plain

    if not isinstance(outputs, (list, tuple)):
        return as_plain(outputs)
    requested = {f.get("name"): f.get("datatype") for f in output_fields if isinstance(f, dict)}
    packed_outputs = []
    for item in outputs:
        if not isinstance(item, dict):
            packed_outputs.append(as_plain(item))
            continue
        data: Any = item.get("data")
        name = item.get("name")
        datatype = item.get("datatype") or requested.get(name)
        packed = None
        if datatype in TYPECODES:
            nan = allow_nan.get(name, False) if isinstance(name, str) else False
            if is_numpy_array(data) and data.size:
                packed = _pack_array(data, datatype, nan)
            elif type(data) is list and len(data) >= PACK_MIN:
                packed = _pack_list(data, datatype, nan)
        if packed is None:
            packed_outputs.append(as_plain(item))
        else:
            packed_outputs.append({**{k: as_plain(v) for k, v in item.items() if k != "data"}, "data": packed})
    return packed_outputs
