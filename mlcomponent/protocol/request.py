"""Decode a V2 inference request (already parsed from its encoding) into an ``InferenceRequest``.

This is the hot path: plain dict access and slotted dataclasses, no validation
framework. Every rejection is a ``BadRequest`` whose message names the input, output
or parameter.
"""

from __future__ import annotations

import difflib
import mimetypes
from typing import Any

from mlcomponent.errors import SHOWN, BadRequest, SpecViolation, shown
from mlcomponent.protocol.tensors import (
    canonical_datatype,
    count_problem,
    flatten_with_kinds,
    min_max,
    shape_problem,
    values_problem,
)
from mlcomponent.protocol.types import InferenceRequest, InputTensor, RequestedOutput
from mlcomponent.spec.model import DATATYPES, FunctionSpec, TensorSpec

# Request parameters the protocol and its clients (Triton's, KServe's) reserve: they steer the
# server (or are ignored: priority, sequences, forwarded headers) and never reach the function.
RESERVED_PARAMETERS = frozenset({"priority", "timeout", "sequence_id", "sequence_start", "sequence_end",
                                 "binary_data_output", "headers"})
PRIMITIVES = (str, int, float, bool)
MICROSECONDS = 1_000_000
WIRE_DATATYPES = ", ".join("BYTES (or str)" if d == "str" else d for d in DATATYPES)


def _datatype(raw: Any, where: str) -> str:
    datatype = canonical_datatype(raw)
    if datatype is None:
        raise BadRequest(f"{where}: unknown datatype {shown(raw)}; use one of {WIRE_DATATYPES}")
    return datatype


def _content_type(item: dict[str, Any], params: dict[str, Any]) -> str | None:
    value = item.get("content_type", params.get("content_type"))
    return value if isinstance(value, str) else None


def decode_input(item: Any, index: int, spec: FunctionSpec) -> InputTensor:
    name, where, params = _input_header(item, index)
    datatype = _datatype(item.get("datatype"), where)
    declared = _declared_input(spec, name, where)
    content_type = _content_type(item, params)
    shape: Any = item.get("shape")
    if datatype == "str" and declared is not None and declared.datatype == "FILE":
        datatype = "FILE"  # a standard client cannot say FILE: it sends the key as a one-element BYTES tensor
    if datatype == "FILE":
        shape, data, content_type = _file_input(item, shape, content_type, where)
    else:
        data = _tensor_data(item, datatype, shape, declared, where)
    if declared is not None:
        _check_declared(declared, datatype, shape, content_type, data, where)
    return InputTensor(name, datatype, shape, data, content_type)


def _input_header(item: Any, index: int) -> tuple[str, str, dict[str, Any]]:
    """The input's name, how messages call it, and its parameters: what every datatype needs."""
    if not isinstance(item, dict):
        raise BadRequest(f"inputs[{index}] must be an object with name, shape, datatype, data")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{index}]: `name` must be a non-empty string")
    quoted = repr(name)  # what shown() gives a name this short, for a fifth of its cost (every input, every request)
    where = f"input {quoted}" if len(quoted) <= SHOWN else f"input {shown(name)}"
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where}: `parameters` must be an object")
    return name, where, params


def _declared_input(spec: FunctionSpec, name: str, where: str) -> TensorSpec | None:
    declared = spec.inputs_by_name.get(name)
    if spec.declared and declared is None:
        known = ", ".join(spec.inputs_by_name) or "none"
        raise SpecViolation(f"{where} is not declared by the function (declared inputs: {known})")
    return declared


def _file_input(item: dict[str, Any], shape: Any, content_type: str | None,
                where: str) -> tuple[Any, str | None, str | None]:
    """A FILE input: shape (default [1]), the key in the file box (or none: an uploaded part), content type."""
    shape = [1] if shape is None else shape
    problem = shape_problem(shape)
    if problem:
        raise BadRequest(f"{where}: {problem}")
    data = item.get("data")
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if data is not None and not isinstance(data, str):
        raise BadRequest(f"{where}: FILE data must be a key in the file box (a string), got {shown(data)}")
    if isinstance(data, str) and _outside_box(data):  # before its content type: the key is the fault
        raise BadRequest(f"{where}: key {shown(data)} must be a relative key inside the file box: it must not "
                         "contain '..', '.' or empty segments, nor start with '/'")
    if content_type is None and data is not None:
        content_type = mimetypes.guess_type(data)[0]  # a key named like a file says what it holds
    return shape, data, content_type


def _tensor_data(item: dict[str, Any], datatype: str, shape: Any, declared: TensorSpec | None,
                 where: str) -> Any:
    """A value tensor's data, flattened, its count and values checked against shape and datatype."""
    problem = shape_problem(shape)
    if problem:
        raise BadRequest(f"{where}: {problem}")
    if "data" not in item:
        raise BadRequest(f"{where}: `data` is missing")
    data, kinds = flatten_with_kinds(item["data"])
    problem = count_problem(shape, data) or values_problem(
        datatype, data, declared.allow_nan if declared else False, kinds)
    if problem:
        raise BadRequest(f"{where}: {problem}")
    return data


def _outside_box(key: str) -> bool:
    """The confinement rule of boxes.base.check_key, checked here so it comes first."""
    return key.startswith("/") or "\\" in key or any(part in ("..", ".") for part in key.split("/"))


def _check_declared(declared: TensorSpec, datatype: str, shape: list[int], content_type: str | None,
                    data: Any, where: str) -> None:
    if declared.datatype != datatype:
        raise SpecViolation(f"{where}: datatype {datatype} does not match the declared {declared.datatype}")
    if not declared.shape_matches(shape):
        raise SpecViolation(f"{where}: shape {shown(shape)} does not match the declared shape {list(declared.shape)} "
                            "(-1: any size)")
    if datatype == "FILE":
        if content_type is None and declared.content_type is not None:
            what = f"the key {shown(data)} has no extension that tells" if isinstance(data, str) else "nothing tells"
            raise SpecViolation(
                f"{where}: {what} its content type, and the function "
                f"declares {declared.content_type!r}; send \"parameters\": {{\"content_type\": "
                f"\"{declared.content_type}\"}} with the input, or name the key with its extension")
        if not declared.content_type_matches(content_type):
            raise SpecViolation(
                f"{where}: content type {shown(content_type)} does not match the declared {declared.content_type!r}")
        return
    if declared.range is not None and data:
        low, high = declared.range
        smallest, largest = min_max(data)
        if not (low <= smallest and largest <= high):  # C speed; find the culprit only on failure
            index, value = next((i, v) for i, v in enumerate(data) if not low <= v <= high)
            raise SpecViolation(f"{where}: element {index} = {shown(value)} is outside the declared range [{low:g}, {high:g}]")
    if declared.values is not None:
        allowed = set(declared.values)
        for index, value in enumerate(data):
            if value not in allowed:
                raise SpecViolation(f"{where}: element {index} = {shown(value)} is not one of {list(declared.values)}")


def decode_parameters(raw: Any, spec: FunctionSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The function's parameters (defaults filled) and the reserved ones."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest("`parameters` must be an object mapping names to primitive values")
    reserved = {k: raw[k] for k in RESERVED_PARAMETERS if k in raw}
    result: dict[str, Any] = {}
    for name, value in raw.items():
        if name in RESERVED_PARAMETERS:
            continue
        declared = spec.parameters_by_name.get(name)
        if declared is None:
            if spec.parameters:
                known = ", ".join(spec.parameters_by_name)
                close = difflib.get_close_matches(name, list(spec.parameters_by_name), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecViolation(f"parameter {shown(name)} is not declared (declared parameters: {known}){hint}")
            if not isinstance(value, PRIMITIVES) and value is not None:
                raise BadRequest(f"parameter {shown(name)} must be a primitive value (string, number, boolean)")
        else:
            problem = declared.value_problem(value)
            if problem:
                raise SpecViolation(f"parameter {shown(name)}: {problem}")
        result[name] = value
    for declared in spec.parameters:
        if declared.name in raw:
            continue
        if declared.has_default:
            result[declared.name] = declared.default
        elif declared.required:
            raise SpecViolation(f"parameter {declared.name!r} is required ({declared.type}): {declared.description}")
    return result, reserved


def decode_outputs(raw: Any, spec: FunctionSpec) -> list[RequestedOutput]:
    """The outputs the client asks for, or the spec's default outputs."""
    if raw is None:
        return [RequestedOutput(t.name, t.datatype, t.content_type, list(t.shape)) for t in spec.default_outputs]
    if not isinstance(raw, list):
        raise BadRequest("`outputs` must be a list of {name, parameters}")
    fields = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise BadRequest(f"outputs[{index}] must be an object with a non-empty string `name`")
        name = item["name"]
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"output {shown(name)}: `parameters` must be an object")
        declared = spec.outputs_by_name.get(name)
        if spec.declared and declared is None:
            known = ", ".join(spec.outputs_by_name) or "none"
            raise SpecViolation(f"output {shown(name)} is not declared by the function (declared outputs: {known})")
        datatype = params.get("datatype", declared.datatype if declared else None)
        if datatype is not None:
            datatype = _datatype(datatype, f"output {shown(name)}")
        content_type = params.get("content_type", declared.content_type if declared else None)
        shape = params.get("shape", list(declared.shape) if declared else None)
        problem = _requested_problem(content_type, shape)
        if problem:
            raise BadRequest(f"output {shown(name)}: {problem}")
        binary = params.get("binary_data")
        fields.append(RequestedOutput(name, datatype, content_type, shape, None if binary is None else binary is True))
    return fields


def _requested_problem(content_type: Any, shape: Any) -> str | None:
    if content_type is not None and not isinstance(content_type, str):
        return f"`content_type` must be a string, got {shown(content_type)}"
    if shape is not None and (not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)):
        return f"`shape` must be a list of integers (-1 for any), got {shown(shape)}"
    return None


def decode_request(body: Any, spec: FunctionSpec) -> InferenceRequest:
    try:
        return _decode_request(body, spec)
    except RecursionError:  # a value nested ~1,000 deep where a flat one belongs (orjson stops at 1,024)
        raise BadRequest("the request nests lists or objects too deeply; ids, shapes, datatypes, keys and "
                         "parameters are flat values, and data is nested as deep as its shape") from None


def _decode_request(body: Any, spec: FunctionSpec) -> InferenceRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with `inputs`")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list):
        raise BadRequest("`inputs` is missing or not a list; send {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")
    inputs = [decode_input(item, index, spec) for index, item in enumerate(raw_inputs)]
    seen: set[str] = set()
    for item in inputs:
        if item.name in seen:
            raise BadRequest(f"input {shown(item.name)} is given twice")
        seen.add(item.name)
    for declared in spec.inputs:
        if not declared.optional and declared.name not in seen:
            raise SpecViolation(f"input {declared.name!r} is required ({declared.datatype}, shape "
                                f"{list(declared.shape)}): {declared.description}")
    parameters, reserved = decode_parameters(body.get("parameters"), spec)
    outputs = decode_outputs(body.get("outputs"), spec)
    request_id = body.get("id")
    return InferenceRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        parameters=parameters,
        outputs=outputs,
        timeout=request_timeout(reserved.get("timeout")),
        binary_data_output=reserved.get("binary_data_output") is True,
    )


def request_timeout(microseconds: Any) -> float | None:
    """The reserved ``timeout`` parameter, in microseconds as Triton's clients send it, as seconds.

    0 (or absent) means no deadline of the request's own; it can only shorten the server's.
    """
    if microseconds is None:
        return None
    if isinstance(microseconds, bool) or not isinstance(microseconds, (int, float)) or not microseconds >= 0:
        raise BadRequest(f"parameter 'timeout' must be a non-negative number of microseconds, got {shown(microseconds)}")
    return microseconds / MICROSECONDS if microseconds else None
