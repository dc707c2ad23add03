"""Drive a served model with one third-party client, as its users would; print what it read.

Runs in the clients' own virtualenv (.venv-clients, see test_standard_clients.py), one client per
process: tritonclient's and KServe's generated gRPC modules both define ``inference.*`` and cannot
share a protobuf pool. Takes the client's name (triton-http-binary, triton-http-json, triton-grpc,
kserve-rest, kserve-grpc) as its argument, reads jobs (a JSON list, a served example each) on stdin
and prints one report per job (a JSON list) on stdout:

    job:    {"http", "grpc", "model", "inputs": [[name, datatype, shape, values]],
             "outputs": [name], "errors": [{"model", "inputs"}]}
    report: {"live", "ready", "model_ready", "metadata": {...}, "outputs": {name: {datatype, shape, value}},
             "errors": [{"status", "message"}]}

Every output is read with ``as_numpy()``, except KServe's FILE outputs over REST, which its
``as_numpy`` refuses (an unknown datatype): those are read through ``data``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}


def array(datatype: str, shape: list[int], values: Any) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([v.encode() for v in np.ravel(values)], dtype=np.object_).reshape(shape)
    return np.asarray(values, dtype=DTYPES[datatype]).reshape(shape)


def plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype == np.object_ or value.dtype.kind in "SU" \
            else value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


def triton(job: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "grpc":
        import tritonclient.grpc as client_module
        from tritonclient.utils import InferenceServerException

        client = client_module.InferenceServerClient(job["grpc"])
        metadata = client.get_model_metadata(job["model"], as_json=True)
    else:
        import tritonclient.http as client_module
        from tritonclient.utils import InferenceServerException

        client = client_module.InferenceServerClient(job["http"])
        metadata = client.get_model_metadata(job["model"])
    binary = mode != "http-json"

    def infer(model: str, inputs: list[list[Any]], outputs: list[str]) -> Any:
        tensors = []
        for name, datatype, shape, values in inputs:
            tensor = client_module.InferInput(name, shape, datatype)
            if mode == "grpc":
                tensor.set_data_from_numpy(array(datatype, shape, values))
            else:
                tensor.set_data_from_numpy(array(datatype, shape, values), binary_data=binary)
            tensors.append(tensor)
        if mode == "grpc":
            wanted = [client_module.InferRequestedOutput(name) for name in outputs]
        else:
            wanted = [client_module.InferRequestedOutput(name, binary_data=binary) for name in outputs]
        return client.infer(model, tensors, outputs=wanted, request_id="matrix-1", priority=1, timeout=30_000_000)

    report: dict[str, Any] = {"live": client.is_server_live(), "ready": client.is_server_ready(),
                              "model_ready": client.is_model_ready(job["model"]),
                              "metadata": {"platform": metadata["platform"],
                                           "inputs": {t["name"]: t["datatype"] for t in metadata["inputs"]},
                                           "outputs": {t["name"]: t["datatype"] for t in metadata["outputs"]}}}
    result = infer(job["model"], job["inputs"], job["outputs"])
    report["outputs"] = {}
    for name in job["outputs"]:
        output = result.get_output(name)
        datatype = output.datatype if mode == "grpc" else output["datatype"]
        report["outputs"][name] = {"datatype": datatype, "value": plain(result.as_numpy(name)),
                                   "shape": list(result.as_numpy(name).shape)}
    report["errors"] = []
    for error in job["errors"]:
        try:
            infer(error["model"], error["inputs"], [])
            report["errors"].append({"status": "none", "message": "no error"})
        except InferenceServerException as failure:
            report["errors"].append({"status": str(failure.status()), "message": failure.message()})
    return report


async def kserve(job: dict[str, Any], mode: str) -> dict[str, Any]:
    from kserve import InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    if mode == "grpc":
        import grpc
        from kserve import InferenceGRPCClient

        client: Any = InferenceGRPCClient(job["grpc"], retries=0)
        live, ready = await client.is_server_live(), await client.is_server_ready()
        model_ready = await client.is_model_ready(job["model"])
        failures: tuple[type[Exception], ...] = (grpc.aio.AioRpcError,)
    else:
        import httpx
        from kserve import InferenceRESTClient, RESTConfig

        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        base = f"http://{job['http']}"
        live, ready = await client.is_server_live(base), await client.is_server_ready(base)
        model_ready = await client.is_model_ready(base, job["model"])
        failures = (httpx.HTTPStatusError,)

    async def infer(model: str, inputs: list[list[Any]], outputs: list[str]) -> Any:
        tensors = []
        for name, datatype, shape, values in inputs:
            tensor = InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(array(datatype, shape, values), binary_data=True)
            tensors.append(tensor)
        request = InferRequest(model, tensors, request_outputs=[RequestedOutput(name) for name in outputs],
                               request_id="matrix-2")
        if mode == "grpc":
            return await client.infer(request)
        return await client.infer(base, request, model_name=model)

    report: dict[str, Any] = {"live": live, "ready": ready, "model_ready": model_ready, "outputs": {}, "errors": []}
    result = await infer(job["model"], job["inputs"], job["outputs"])
    for output in result.outputs:
        value = output.data if output.datatype == "FILE" else plain(output.as_numpy())
        report["outputs"][output.name] = {"datatype": output.datatype, "shape": list(output.shape),
                                          "value": plain(value)}
    for error in job["errors"]:
        try:
            await infer(error["model"], error["inputs"], [])
            report["errors"].append({"status": "none", "message": "no error"})
        except failures as failure:
            if mode == "grpc":
                report["errors"].append({"status": str(failure.code()), "message": failure.details()})
            else:
                report["errors"].append({"status": str(failure.response.status_code), "message": str(failure)})
    await client.close()
    return report


def main() -> None:
    """One client (argv[1]), every case (a served example each) on stdin, one report per case."""
    family, _, mode = sys.argv[1].partition("-")
    reports = [triton(job, mode) if family == "triton" else asyncio.run(kserve(job, mode)) for job in json.load(sys.stdin)]
    json.dump(reports, sys.stdout)


if __name__ == "__main__":
    main()
