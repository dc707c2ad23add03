"""The docstring spec at request time, in metadata, and in warm-up: over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from tests.support import HTTP, Server, run_cli, serve, wait_ready, write_manifest

INFER = "/v2/models/test-model/infer"


def x_input(data: object = None, shape: list[int] | None = None, datatype: str = "FP32") -> dict[str, object]:
    return {"name": "x", "datatype": datatype, "shape": shape or [1, 2], "data": data or [1.0, 2.0]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": []}, "input 'x' is required (FP32, shape [-1, 2]): pairs of numbers."),
        ({"inputs": [x_input(), {"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}]},
         "input 'z' is not declared by the function (declared inputs: x, mode, doc)"),
        ({"inputs": [x_input([1, 2], datatype="INT32")]}, "input 'x': datatype INT32 does not match the declared FP32"),
        ({"inputs": [x_input([1, 2, 3], shape=[1, 3])]},
         "input 'x': shape [1, 3] does not match the declared shape [-1, 2] (-1: any size)"),
        ({"inputs": [x_input([1, 20])]}, "input 'x': element 1 = 20 is outside the declared range [-10, 10]"),
        ({"inputs": [x_input(), {"name": "mode", "datatype": "str", "shape": [1], "data": ["slow"]}]},
         "input 'mode': element 0 = 'slow' is not one of ['fast', 'exact']"),
        ({"inputs": [x_input(), {"name": "doc", "datatype": "FILE", "shape": [1], "data": "a.png",
                                 "parameters": {"content_type": "image/png"}}]},
         "input 'doc': content type 'image/png' does not match the declared 'text/csv'"),
        ({"inputs": [x_input()], "parameters": {"scale": "big"}}, "parameter 'scale': must be of type float, got str"),
        ({"inputs": [x_input()], "parameters": {"scale": 1000}}, "parameter 'scale': 1000 is outside the allowed range [0, 100]"),
        ({"inputs": [x_input()], "parameters": {"level": "mid"}}, "parameter 'level': 'mid' is not one of ['low', 'high']"),
        ({"inputs": [x_input()], "parameters": {"count": 1.5}}, "parameter 'count': must be of type int"),
        ({"inputs": [x_input()], "parameters": {"colour": "red"}}, "parameter 'colour' is not declared"),
        ({"inputs": [x_input()], "outputs": [{"name": "nope"}]}, "output 'nope' is not declared by the function"),
    ],
)
def test_requests_that_break_the_spec_are_400_naming_the_field(full: Server, body: dict[str, object],
                                                               needle: str) -> None:
    response = HTTP.post(full.url + INFER, json=body)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_defaults_fill_parameters_and_declared_outputs_are_requested(full: Server) -> None:
    response = HTTP.post(full.url + INFER, json={"inputs": [x_input([1.5, -2.0], [1, 2])],
                                                  "parameters": {"flag": True}})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"y", "seen"}  # `extra` is optional: only when asked
    assert outputs["y"]["data"] == [3.0, -4.0]
    assert outputs["seen"]["data"] == [repr([("flag", True), ("level", "low"), ("scale", 2.0)])]
    asked = HTTP.post(full.url + INFER, json={"inputs": [x_input()], "outputs": [{"name": "extra"}]}).json()
    assert asked["outputs"] == [{"name": "extra", "datatype": "INT32", "shape": [1], "data": [2]}]


def test_metadata_carries_the_spec_and_a_v2_client_reads_it(full: Server) -> None:
    client = triton.InferenceServerClient(full.url.removeprefix("http://"))
    meta = client.get_model_metadata("test-model")
    assert client.is_model_ready("test-model") and client.is_server_live()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("x", "FP32", [-1, 2]), ("mode", "BYTES", [1]), ("doc", "FILE", [1])]
    assert meta["inputs"][2]["parameters"]["content_type"] == "text/csv"
    assert meta["inputs"][0]["parameters"]["range"] == [-10, 10]
    assert meta["outputs"][2]["parameters"]["optional"] is True
    params = {p["name"]: p for p in meta["parameters"]["parameters"]}
    assert params["scale"] == {"name": "scale", "type": "float", "description": "the multiplier.",
                               "required": False, "default": 2.0, "range": [0, 100]}
    request = triton.InferInput("x", [2, 2], "FP32")
    request.set_data_from_numpy(np.array([[1, 2], [3, 4]], dtype=np.float32), binary_data=False)
    result = client.infer("test-model", [request], outputs=[triton.InferRequestedOutput("y", binary_data=False)])
    assert result.as_numpy("y").tolist() == [[2, 4], [6, 8]]


def test_a_function_without_a_spec_serves_and_says_so(tmp_path: Path) -> None:
    with serve(write_manifest(tmp_path, "echo.inference"), data_root=tmp_path / "data") as server:
        meta = HTTP.get(server.url + "/v2/models/test-model").json()
        assert meta["inputs"] == [] and meta["parameters"]["declared"] is False
    assert "has no docstring specification" in server.output()


def test_validate_checks_the_docstring_spec_and_names_the_line(tmp_path: Path) -> None:
    result = run_cli("validate", str(write_manifest(tmp_path, "bad_docstring.inference")))
    assert result.returncode == 1
    assert "docstring line 4 (source line 5): unknown datatype 'FP16'" in result.stderr
    good = run_cli("validate", str(write_manifest(tmp_path, "spec_full.inference")))
    assert good.returncode == 0 and "docstring spec OK (3 inputs, 3 outputs, 4 parameters)" in good.stdout


def test_warm_up_makes_readiness_wait_for_the_model(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    manifest = write_manifest(tmp_path, "gated_warmup.inference")
    with serve(manifest, data_root=tmp_path / "data", env={"GATE_FILE": str(gate)}) as server:
        with server.client() as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").json() == {"ready": False}
            refused = client.post(INFER, json={"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            gate.touch()
            wait_ready(server)
            answer = client.post(INFER, json={"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]})
            assert answer.json()["outputs"][0]["data"] == [2]  # the warm-up was call 1, on the same model


def test_a_failing_warm_up_keeps_the_service_not_ready(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "failing_warmup.inference")
    with serve(manifest, data_root=tmp_path / "data") as server:
        with server.client() as client:
            deadline = time.monotonic() + 60
            while "warm-up with the docstring's Example failed" not in server.output():
                assert client.get("/v2/health/live").status_code == 200
                assert time.monotonic() < deadline, f"the warm-up never failed:\n{server.output()}"
                time.sleep(0.05)
            assert client.get("/v2/health/ready").status_code == 503
            assert client.get("/v2/health/live").status_code == 200
    assert "FileNotFoundError: no model at" in server.output() and "Traceback" in server.output()
