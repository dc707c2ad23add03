"""The protocol's gRPC messages to and from what the rest of mlcomponent speaks.

Server side: a ``ModelInferRequest`` becomes the same V2 body (JSON values) that the REST
transport hands the data plane, and an ``InferenceResponse`` becomes a ``ModelInferResponse``.
Client side: the reverse, so ``mlcomponent.client`` parses a gRPC answer as it parses JSON.

Tensor contents come either as ``raw_input_contents`` (one entry per input, in order: little
endian numbers, BYTES as 4-byte length + UTF-8) or as typed ``contents``; answers mirror the
request (raw unless the request sent typed contents), since the protocol forbids mixing them.

A FILE tensor is a box key. Standard clients cannot say ``FILE`` (they check datatypes against
numpy), so a FILE input may come as a one-element BYTES tensor, and a FILE output goes out as
a BYTES tensor of its key with ``parameters`` ``datatype: FILE``, ``content_type`` and
``path`` (the REST download path: gRPC has no file download).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from open_inference.grpc.protocol import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataResponse,
)

from mlcomponent.errors import BadRequest
from mlcomponent.protocol.binary import decode_tensor, encode_tensor
from mlcomponent.protocol.packed import Packed
from mlcomponent.protocol.request import MICROSECONDS
from mlcomponent.protocol.response import wire_datatype
from mlcomponent.protocol.tensors import canonical_datatype
from mlcomponent.protocol.types import InferenceResponse

SERVICE = "inference.GRPCInferenceService"
# The gRPC status code of each HTTP status the service answers with (errors.py), both ways.
CODES = {502: grpc.StatusCode.INTERNAL, 507: grpc.StatusCode.RESOURCE_EXHAUSTED,  # first: read back as 500, 413
         400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
         404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
_NUMBER_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents"}
_ALL_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
               "fp32_contents", "fp64_contents", "bytes_contents")


# --------------------------------------------------------------------------- parameters


def parameter_value(parameter: InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def parameters_dict(parameters: Mapping[str, InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a ``map<string, InferParameter>`` from plain values (nested values as their JSON)."""
    import orjson

    for key, value in values.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            parameter.int64_param = value
        elif isinstance(value, int | float):
            parameter.double_param = float(value)
        elif isinstance(value, str):
            parameter.string_param = value
        elif value is not None:
            parameter.string_param = orjson.dumps(value).decode()


# --------------------------------------------------------------------------- server side


def _typed_data(datatype: str | None, contents: InferTensorContents, where: str) -> list[Any]:
    field = _NUMBER_FIELDS.get(datatype or "")
    if field is not None:
        return list(getattr(contents, field))
    if datatype in ("str", "FILE"):
        try:
            return [value.decode("utf-8") for value in contents.bytes_contents]
        except UnicodeDecodeError:
            raise BadRequest(f"{where}: bytes_contents holds an element that is not UTF-8 text (BYTES)") from None
    # a datatype we do not serve: hand on whatever came, so decoding names the datatype at fault
    return next((list(getattr(contents, name)) for name in _ALL_FIELDS if len(getattr(contents, name))), [])


def request_body(message: ModelInferRequest, deadline: float | None = None) -> tuple[dict[str, Any], bool]:
    """The V2 body of a ``ModelInferRequest``, and whether to answer in raw contents.

    ``deadline`` (seconds left, from the gRPC deadline) becomes the reserved ``timeout``
    parameter (microseconds), or shortens the one the request carries.
    """
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
                         "send one per input, in the inputs' order")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        where = f"input {tensor.name!r}"
        canonical = canonical_datatype(tensor.datatype)
        if raw:
            data = decode_tensor(tensor.datatype, memoryview(raw[index]), where) if canonical else []
        else:
            data = _typed_data(canonical, tensor.contents, where)
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                                "data": data}
        if tensor.parameters:
            item["parameters"] = parameters_dict(tensor.parameters)
        inputs.append(item)
    body: dict[str, Any] = {"inputs": inputs}
    if message.id:
        body["id"] = message.id
    parameters = parameters_dict(message.parameters) if message.parameters else {}
    if deadline is not None:
        left = max(1, int(deadline * MICROSECONDS))
        given = parameters.get("timeout")
        if not given or (type(given) in (int, float) and given > left):  # absent or 0 (none), or later
            parameters["timeout"] = left
    if parameters:
        body["parameters"] = parameters
    if message.outputs:
        body["outputs"] = [{"name": output.name, **({"parameters": parameters_dict(output.parameters)}
                                                    if output.parameters else {})} for output in message.outputs]
    return body, bool(raw) or not message.inputs


def as_list(data: Any) -> Any:
    """Packed numbers (a view of raw bytes) as the list a typed field or a client wants."""
    return data.tolist() if isinstance(data, Packed) else data


def _fill_typed(contents: InferTensorContents, datatype: str, data: list[Any]) -> None:
    field = _NUMBER_FIELDS.get(datatype)
    if field is not None:
        getattr(contents, field).extend(data)
    else:
        contents.bytes_contents.extend(value.encode("utf-8") for value in data)


def response_message(response: InferenceResponse, raw: bool) -> ModelInferResponse:
    """A ``ModelInferResponse`` from the data plane's answer: BYTES for str, BYTES + parameters for FILE."""
    message = ModelInferResponse(model_name=response.model_name, id=response.request.id or "")
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=wire_datatype(output.datatype), shape=output.shape)
        if output.datatype == "FILE":
            tensor.datatype = "BYTES"
            set_parameters(tensor.parameters, {"datatype": "FILE",
                                               "path": f"/v2/models/{response.model_name}/files/{output.data[0]}"})
        if output.content_type:
            tensor.parameters["content_type"].string_param = output.content_type
        if raw:
            message.raw_output_contents.append(bytes(encode_tensor(output.datatype, output.data)))
        else:
            _fill_typed(tensor.contents, output.datatype, as_list(output.data))
    return message


def metadata_message(metadata: Mapping[str, Any]) -> ModelMetadataResponse:
    """The REST model metadata (``http/metadata.py``) as the protocol's ``ModelMetadataResponse``."""
    message = ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"],
                                    platform=metadata["platform"])
    for target, tensors in ((message.inputs, metadata["inputs"]), (message.outputs, metadata["outputs"])):
        for tensor in tensors:
            target.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return message


# --------------------------------------------------------------------------- client side


def infer_request(model: str, body: Mapping[str, Any]) -> ModelInferRequest:
    """A ``ModelInferRequest`` (raw contents) from a V2 body of flat or nested JSON values."""
    from mlcomponent.protocol.tensors import flatten_with_kinds

    message = ModelInferRequest(model_name=model, id=str(body.get("id") or ""))
    for item in body.get("inputs", []):
        tensor = message.inputs.add(name=item["name"], datatype=item["datatype"], shape=item["shape"])
        data, _ = flatten_with_kinds(item.get("data", []))
        canonical = canonical_datatype(item["datatype"])
        if canonical is None:
            raise BadRequest(f"input {item['name']!r}: datatype {item['datatype']!r} cannot be sent over gRPC")
        message.raw_input_contents.append(encode_tensor(canonical, data))
        if item.get("parameters"):
            set_parameters(tensor.parameters, item["parameters"])
    set_parameters(message.parameters, body.get("parameters") or {})
    for output in body.get("outputs") or []:
        requested = message.outputs.add(name=output["name"])
        set_parameters(requested.parameters, output.get("parameters") or {})
    return message


def response_body(message: ModelInferResponse) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the REST JSON body (FILE outputs as FILE again, with their path)."""
    outputs = []
    raw = message.raw_output_contents
    for index, tensor in enumerate(message.outputs):
        parameters = parameters_dict(tensor.parameters)
        datatype = parameters.pop("datatype", None) or tensor.datatype
        where = f"output {tensor.name!r}"
        if raw:
            data = as_list(decode_tensor(tensor.datatype, memoryview(raw[index]), where))
        else:
            data = _typed_data(canonical_datatype(tensor.datatype), tensor.contents, where)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": datatype, "shape": list(tensor.shape), "data": data}
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": message.model_name, "outputs": outputs}
    if message.id:
        body["id"] = message.id
    return body


def metadata_body(message: ModelMetadataResponse) -> dict[str, Any]:
    def tensors(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {"name": message.name, "versions": list(message.versions), "platform": message.platform,
            "inputs": tensors(message.inputs), "outputs": tensors(message.outputs)}
