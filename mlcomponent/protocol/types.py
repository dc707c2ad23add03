"""The wire objects that travel inside the service: one decoded request, one checked answer.

Transports decode their encoding (JSON, binary tensors, multipart, later gRPC) into an
``InferenceRequest``; the data plane answers with an ``InferenceResponse``. The spec's
plain dicts exist only at the function's edge (``InferenceRequest.function_arguments``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FunctionArguments = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str  # our name: FP32, FP64, INT32, str or FILE (str is BYTES on the wire)
    shape: list[int]
    data: Any  # a flat list; for FILE, the key in the file box (None when it came as an upload)
    content_type: str | None = None


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for (or the spec's default outputs)."""

    name: str
    datatype: str | None
    content_type: str | None
    shape: list[int] | None
    binary: bool | None = None  # the output's own `binary_data`; None when the client did not say


@dataclass(slots=True)
class StagedFile:
    """A FILE input or output placed in the request folder, as the function will see it
    (for a merged batch: the list of the members' paths)."""

    path: str | list[str]
    content_type: str | None


@dataclass(slots=True)
class InferenceRequest:
    id: str | None
    inputs: list[InputTensor]
    parameters: dict[str, Any]  # the function's parameters (declared defaults filled), in order
    outputs: list[RequestedOutput]
    timeout: float | None = None  # seconds, from the reserved `timeout` parameter (sent in microseconds)
    binary_data_output: bool = False

    @property
    def has_files(self) -> bool:
        return any(i.datatype == "FILE" for i in self.inputs) or any(o.datatype == "FILE" for o in self.outputs)

    def wants_binary(self, name: str) -> bool:
        """Triton's rule: an output's own `binary_data` wins over the request's `binary_data_output`."""
        for output in self.outputs:
            if output.name == name and output.binary is not None:
                return output.binary
        return self.binary_data_output

    def function_arguments(self, staged_inputs: Mapping[str, StagedFile] | None = None,
                           staged_outputs: Mapping[str, StagedFile] | None = None) -> FunctionArguments:
        """``(parameters, inputs, output_fields)`` exactly as the spec gives them to ``inference``."""
        staged_inputs = staged_inputs or {}
        staged_outputs = staged_outputs or {}
        parameters = [{"name": name, "value": value} for name, value in self.parameters.items()]
        inputs = []
        for tensor in self.inputs:
            staged = staged_inputs.get(tensor.name)
            inputs.append({"name": tensor.name, "datatype": tensor.datatype,
                           "content_type": staged.content_type if staged else tensor.content_type,
                           "data": staged.path if staged else tensor.data, "shape": tensor.shape})
        output_fields = []
        for output in self.outputs:
            target = staged_outputs.get(output.name)
            output_fields.append({"name": output.name, "datatype": output.datatype,
                                  "content_type": output.content_type,
                                  "data": target.path if target else None, "shape": output.shape})
        return parameters, inputs, output_fields


@dataclass(slots=True)
class OutputTensor:
    """One checked output of the function (FILE outputs: ``data`` is ``[key]`` once published)."""

    name: str
    datatype: str
    shape: list[int]
    data: Any
    content_type: str | None = None


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    request: InferenceRequest  # says how the client wants the answer encoded
    outputs: list[OutputTensor]
    uploaded_files: dict[str, str] = field(default_factory=dict)  # input name -> key of the kept upload
