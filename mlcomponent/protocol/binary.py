"""The V2 binary tensor data extension (as Triton and standard V2 clients speak it).

A request or response body is JSON followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header says where the JSON ends. Each binary
tensor says its byte size in ``parameters.binary_data_size``, in order. Numbers are
little-endian; a str/BYTES element is a 4-byte little-endian length and its UTF-8 bytes.

Numeric tensors stay bytes both ways (``Packed``, a view of the body): no list is built
here, and a function that takes numpy arrays never sees one.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable
from typing import Any

from mlcomponent.errors import BadRequest, shown
from mlcomponent.protocol.packed import ITEMSIZE, Packed
from mlcomponent.protocol.tensors import canonical_datatype

HEADER = "inference-header-content-length"
MAX_DIGITS = 18  # an int64 byte count; int() refuses a 5,000-digit string with a ValueError
TYPECODES = {"FP32": "f", "FP64": "d", "INT32": "i"}
LENGTH = struct.Struct("<I")


def _numbers(datatype: str, chunk: memoryview, where: str) -> Packed:
    if len(chunk) % ITEMSIZE[datatype]:
        raise BadRequest(f"{where}: {len(chunk)} bytes is not a whole number of {datatype} elements")
    return Packed(datatype, chunk)


def _strings(chunk: memoryview, where: str) -> list[str]:
    values, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise BadRequest(f"{where}: truncated BYTES element length at byte {offset}")
        (size,) = LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + size > len(chunk):
            raise BadRequest(f"{where}: BYTES element at byte {offset} runs past the data")
        try:
            values.append(str(chunk[offset:offset + size], "utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: element {len(values)} is not UTF-8 text (str)") from None
        offset += size
    return values


def decode_tensor(datatype: Any, chunk: memoryview, where: str) -> Packed | list[str]:
    """One tensor's raw bytes (this extension, or gRPC's raw contents): numbers stay packed bytes
    (a view, no copy), strings become a list.

    A FILE tensor's raw bytes are its key, encoded as one BYTES element.
    """
    canonical = canonical_datatype(datatype)
    if canonical in TYPECODES:
        return _numbers(canonical, chunk, where)
    if canonical in ("str", "FILE"):
        return _strings(chunk, where)
    raise BadRequest(f"{where}: datatype {shown(datatype)} cannot be sent as binary data")


def decode(raw: bytes, json_length: str) -> Any:
    """Split a binary request into its JSON and fill each binary input's ``data``."""
    import orjson

    if (not (json_length.isascii() and json_length.isdigit()) or len(json_length) > MAX_DIGITS
            or int(json_length) > len(raw)):
        raise BadRequest(f"Inference-Header-Content-Length {shown(json_length)} must be the JSON's size in bytes, "
                         f"at most the body's {len(raw)}")
    split = int(json_length)
    try:
        body = orjson.loads(raw[:split])
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"malformed JSON header of a binary request: {error}") from None
    offset = split
    view = memoryview(raw)
    inputs = body.get("inputs") if isinstance(body, dict) else None
    for index, item in enumerate(inputs if isinstance(inputs, list) else []):  # decode_request refuses the rest
        params = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        where = f"input {shown(item.get('name', index))}"
        size = params.pop("binary_data_size")
        if not isinstance(size, int) or size < 0 or offset + size > len(raw):
            raise BadRequest(f"{where}: binary_data_size {shown(size)} runs past the end of the body")
        chunk = view[offset:offset + size]
        offset += size
        item["data"] = decode_tensor(item.get("datatype"), chunk, where)
    if offset != len(raw):
        raise BadRequest(f"the body has {len(raw) - offset} bytes after the last binary input")
    return body


def encode_tensor(datatype: str, data: Any) -> bytes | memoryview:
    """A tensor's values (our datatype names) as raw little-endian bytes, a ``Packed`` one as it is;
    str and FILE as BYTES elements."""
    if isinstance(data, Packed):
        return data.raw if data.datatype == datatype else encode_tensor(datatype, data.tolist())
    if datatype in TYPECODES:
        values = array(TYPECODES[datatype], data)
        if sys.byteorder == "big":
            values.byteswap()
        return values.tobytes()
    parts = []
    for value in data:
        encoded = value.encode("utf-8")
        parts.append(LENGTH.pack(len(encoded)) + encoded)
    return b"".join(parts)


def encode(body: dict[str, Any], wants_binary: Callable[[str], bool]) -> tuple[list[bytes], int] | None:
    """Move the data of the outputs the client wants in binary after the JSON; None when there are none.

    The outputs that stay in the JSON get their packed data as ``Packed.json_values`` (in ``body``, in
    place): dump it with orjson's ``OPT_SERIALIZE_NUMPY``.
    """
    import orjson

    blobs: list[Any] = []
    for output in body["outputs"]:
        datatype = canonical_datatype(output["datatype"])
        if datatype == "FILE" or not wants_binary(output["name"]):
            if isinstance(output.get("data"), Packed):
                output["data"] = output["data"].json_values()  # dumped with OPT_SERIALIZE_NUMPY
            continue
        blob = encode_tensor(datatype or "", output.pop("data"))
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(blob)}
        blobs.append(blob)
    if not blobs:
        return None
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)  # packed data: json_values
    return [header, *blobs], len(header)
