"""Check what the function returned, and encode the V2 inference response.

A malformed output is the function's fault: ``BadFunctionOutput`` (500) naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlcomponent.errors import BadFunctionOutput
from mlcomponent.protocol.plain import as_plain
from mlcomponent.protocol.tensors import (
    canonical_datatype,
    count_problem,
    flatten_with_kinds,
    shape_problem,
    values_problem,
)
from mlcomponent.protocol.types import InferenceRequest, InferenceResponse, OutputTensor, RequestedOutput
from mlcomponent.spec.model import FunctionSpec


def check_outputs(returned: Any, request: InferenceRequest, spec: FunctionSpec) -> list[OutputTensor]:
    """Normalise the function's outputs (flat data, plain values) in the requested order."""
    by_name = {item["name"]: item for item in output_items(returned)}
    requested = {output.name: output for output in request.outputs}
    names = list(requested) if requested else list(by_name)
    outputs = []
    for name in names:
        item = by_name.get(name)
        if item is None:
            raise BadFunctionOutput(f"inference did not return the requested output {name!r} "
                                    f"(it returned: {', '.join(by_name) or 'nothing'})")
        outputs.append(_check_one(item, requested.get(name), spec))
    return outputs


def output_items(returned: Any) -> list[dict[str, Any]]:
    """The function's outputs, each a dict with a string ``name`` (``BadFunctionOutput`` if not)."""
    if not isinstance(returned, (list, tuple)):
        raise BadFunctionOutput(f"inference returned outputs of type {type(returned).__name__}; "
                                "return a list of {name, datatype, data, shape} dicts")
    for index, item in enumerate(returned):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadFunctionOutput(f"inference returned outputs[{index}] = {item!r:.80}; each output must "
                                    "be a dict with a string `name`")
    return list(returned)


def _check_one(item: dict[str, Any], requested: RequestedOutput | None, spec: FunctionSpec) -> OutputTensor:
    name = item["name"]
    where = f"inference output {name!r}"
    raw_type = item.get("datatype") or (requested.datatype if requested else None)
    datatype = canonical_datatype(raw_type)
    if datatype is None:
        raise BadFunctionOutput(f"{where}: datatype {raw_type!r} is not one of FP32, FP64, INT32, str, FILE")
    declared = spec.outputs_by_name.get(name)
    if declared is not None and declared.datatype != datatype:
        raise BadFunctionOutput(f"{where}: datatype {datatype} differs from the declared {declared.datatype}")
    data = as_plain(item.get("data"))
    shape = as_plain(item.get("shape"))
    if datatype == "FILE":
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, str):
            raise BadFunctionOutput(f"{where}: FILE data must be the path of the written file, got {data!r:.80}")
        shape = [1] if shape is None else shape
    else:
        data, kinds = flatten_with_kinds(data)
        if shape is None:
            shape = [len(data)]
    problem = shape_problem(shape)
    if problem:
        raise BadFunctionOutput(f"{where}: {problem}")
    if datatype != "FILE":
        problem = count_problem(shape, data) or values_problem(
            datatype, data, declared.allow_nan if declared else False, kinds)
        if problem:
            raise BadFunctionOutput(f"{where}: {problem}")
    if declared is not None and not declared.shape_matches(shape):
        raise BadFunctionOutput(f"{where}: shape {shape} does not match the declared {list(declared.shape)}")
    content_type = item.get("content_type") or (requested.content_type if requested else None)
    return OutputTensor(name, datatype, shape, data, content_type)


def wire_datatype(datatype: str) -> str:
    """The protocol's name for one of ours: a function's str is BYTES on the wire, everywhere."""
    return "BYTES" if datatype == "str" else datatype


def encode_response(response: InferenceResponse, file_url: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The V2 response body as JSON values (before any binary extension is applied).

    ``file_url`` turns a FILE output's key into the transport's download URL.
    """
    request = response.request
    encoded = []
    for output in response.outputs:
        datatype = wire_datatype(output.datatype)
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": output.shape,
                                 "data": output.data}
        params: dict[str, Any] = {}
        if datatype == "FILE" and file_url is not None:
            params["url"] = file_url(output.data[0])
        if output.content_type:
            params["content_type"] = output.content_type
        if params:
            entry["parameters"] = params
        encoded.append(entry)
    body: dict[str, Any] = {"model_name": response.model_name, "outputs": encoded}
    if request.id is not None:
        body["id"] = request.id
    if response.uploaded_files:
        body["parameters"] = {"uploaded_files": response.uploaded_files}
    return body
