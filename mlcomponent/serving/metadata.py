"""Server and model metadata in the V2 shape, for both transports; our extra fields live under ``parameters``.

Datatypes are the protocol's (a declared ``str`` is ``BYTES``); ``platform`` follows the
protocol's ``<project>_<format>`` convention.
"""

from __future__ import annotations

import os
from typing import Any

from mlcomponent import __version__
from mlcomponent.protocol.response import wire_datatype
from mlcomponent.spec.model import FunctionSpec, TensorSpec

PLATFORM = "mlcomponent_python"
MODEL_VERSION_ENV = "MLCOMPONENT_MODEL_VERSION"  # the model content hash the operator rolled this pod for
EXTENSIONS = ["binary_tensor_data", "file_datatype", "str_datatype", "multipart_files"]


def server_metadata() -> dict[str, Any]:
    """The server metadata document (REST ``GET /v2``, gRPC ``ServerMetadata``)."""
    return {"name": "mlcomponent", "version": __version__, "extensions": EXTENSIONS}


def _tensor(tensor: TensorSpec) -> dict[str, Any]:
    extra: dict[str, Any] = {"description": tensor.description, "optional": tensor.optional}
    if tensor.content_type:
        extra["content_type"] = tensor.content_type
    if tensor.range is not None:
        extra["range"] = list(tensor.range)
    if tensor.values is not None:
        extra["values"] = list(tensor.values)
    if tensor.allow_nan:
        extra["nan"] = True
    return {"name": tensor.name, "datatype": wire_datatype(tensor.datatype), "shape": list(tensor.shape), "parameters": extra}


def model_metadata(name: str, spec: FunctionSpec) -> dict[str, Any]:
    parameters: dict[str, Any] = {"declared": spec.declared, "description": spec.summary}
    if spec.parameters:
        parameters["parameters"] = [
            {"name": p.name, "type": p.type, "description": p.description, "required": p.required,
             **({"default": p.default} if p.has_default else {}),
             **({"range": list(p.range)} if p.range is not None else {}),
             **({"values": list(p.values)} if p.values is not None else {})}
            for p in spec.parameters
        ]
    if spec.example is not None:
        parameters["example"] = spec.example
    if spec.batching is not None:
        parameters["batching"] = {"max_batch_size": spec.batching.max_batch_size,
                                  "max_batch_delay_ms": spec.batching.max_batch_delay * 1000,
                                  "data": "numpy" if spec.batching.numpy else "lists"}
    version = os.environ.get(MODEL_VERSION_ENV)
    if version:
        parameters["model_version"] = version
    return {
        "name": name,
        "versions": [],
        "platform": PLATFORM,
        "inputs": [_tensor(t) for t in spec.inputs],
        "outputs": [_tensor(t) for t in spec.outputs],
        "parameters": parameters,
    }
