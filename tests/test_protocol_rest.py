"""What a standard Open Inference Protocol client relies on over REST, beyond the happy path:
BYTES on the wire, reserved parameters, Triton's binary extension rules, 405 with Allow, ``/v2/``."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import HTTP, Server, serve_fixture

MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"


X = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}


def test_metadata_says_bytes_and_the_platform_by_convention(full: Server) -> None:
    meta = HTTP.get(f"{full.url}/v2/models/{MODEL}").json()
    assert meta["platform"] == "mlcomponent_python"
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {"x": "FP32", "mode": "BYTES", "doc": "FILE"}
    assert {t["name"]: t["datatype"] for t in meta["outputs"]} == {"y": "FP32", "seen": "BYTES", "extra": "INT32"}


def test_reserved_parameters_are_understood_never_refused_never_passed_on(full: Server) -> None:
    reserved = {"priority": 1, "timeout": 30_000_000, "sequence_id": 7, "sequence_start": True, "sequence_end": True,
                "binary_data_output": False, "headers": {"x-forwarded-for": "10.1.1.1"}}
    response = HTTP.post(full.url + INFER, json={"inputs": [X], "parameters": {"scale": 3.0, **reserved},
                                                  "outputs": [{"name": "seen"}]})
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["datatype"] == "BYTES"
    assert output["data"] == [repr([("flag", False), ("level", "low"), ("scale", 3.0)])]
    undeclared = HTTP.post(full.url + INFER, json={"inputs": [X], "parameters": {"colour": "red"}})
    assert undeclared.status_code == 400 and "parameter 'colour' is not declared" in undeclared.json()["error"]


def test_a_bytes_tensor_for_a_declared_file_input_is_its_key_typed_by_its_name(full: Server) -> None:
    """Standard clients cannot say FILE; a one-element BYTES tensor is the key, its type guessed from the name."""
    body = {"inputs": [X, {"name": "doc", "datatype": "BYTES", "shape": [1], "data": ["users/a/photo.png"]}]}
    response = HTTP.post(full.url + INFER, json=body)
    assert response.status_code == 400
    assert response.json()["error"] == ("input 'doc': content type 'image/png' does not match the declared "
                                         "'text/csv'")


def test_405_names_the_allowed_methods(full: Server) -> None:
    for method, path, allowed in (("DELETE", "/v2/health/live", {"GET", "HEAD"}), ("GET", INFER, {"POST"}),
                                  ("PUT", f"/v2/models/{MODEL}", {"GET", "HEAD"})):
        response = HTTP.request(method, full.url + path)
        assert response.status_code == 405
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
        assert response.json()["error"].startswith(f"method {method} is not allowed on {path}")


def test_server_metadata_answers_with_and_without_the_trailing_slash(full: Server) -> None:
    bare, slash = HTTP.get(full.url + "/v2"), HTTP.get(full.url + "/v2/")
    assert bare.status_code == slash.status_code == 200
    assert bare.json() == slash.json() and bare.json()["name"] == "mlcomponent"


# --------------------------------------------------------------------------- Triton's binary extension, timeout


def binary_infer(server: Server, outputs: list[dict[str, object]], **parameters: object) -> httpx.Response:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                     "parameters": {"binary_data_size": 8}},
                                    {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ok"]}],
                         "outputs": outputs, "parameters": parameters}).encode()
    return HTTP.post(server.url + INFER, content=header + struct.pack("<2f", 1.5, -2),
                      headers={"Inference-Header-Content-Length": str(len(header))})


def split(response: httpx.Response) -> tuple[dict[str, dict[str, object]], bytes]:
    length = response.headers.get("inference-header-content-length")
    if length is None:
        return {o["name"]: o for o in response.json()["outputs"]}, b""
    head = json.loads(response.content[:int(length)])
    return {o["name"]: o for o in head["outputs"]}, response.content[int(length):]


def test_an_outputs_own_binary_data_wins_over_the_request_setting_both_ways(echo: Server) -> None:
    outputs, blob = split(binary_infer(echo, [{"name": "x", "parameters": {"binary_data": False}}, {"name": "s"}],
                                       binary_data_output=True))
    assert outputs["x"]["data"] == [1.5, -2.0] and "binary_data_size" not in outputs["x"].get("parameters", {})
    assert outputs["s"]["datatype"] == "BYTES" and outputs["s"]["parameters"]["binary_data_size"] == 6
    assert blob == struct.pack("<I", 2) + b"ok"
    outputs, blob = split(binary_infer(echo, [{"name": "x", "parameters": {"binary_data": True}}, {"name": "s"}],
                                       binary_data_output=False))
    assert outputs["s"]["data"] == ["ok"] and outputs["x"]["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(blob, dtype="<f4").tolist() == [1.5, -2.0]
    outputs, blob = split(binary_infer(echo, [{"name": "x"}, {"name": "s"}]))
    assert blob == b"" and outputs["x"]["data"] == [1.5, -2.0]  # nobody asked for binary: all JSON


@pytest.mark.parametrize(("timeout", "status"), [(0, 200), (10_000_000, 200), ("soon", 400), (-1, 400)])
def test_timeout_is_microseconds_and_zero_means_none(echo: Server, timeout: object, status: int) -> None:
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}], "parameters": {"timeout": timeout}}
    response = HTTP.post(echo.url + INFER, json=body)
    assert response.status_code == status, response.text
    if status == 400:
        assert "must be a non-negative number of microseconds" in response.json()["error"]


def test_a_request_timeout_never_lengthens_the_servers_deadline(tmp_path: Path) -> None:
    with serve_fixture(tmp_path, "behaviours.inference", "--timeout", "1") as server:
        body = {"inputs": [], "parameters": {"do": "sleep", "seconds": 30, "timeout": 60_000_000}}
        started = time.monotonic()
        response = HTTP.post(server.url + INFER, json=body, timeout=60)
        assert response.status_code == 504, response.text
        assert time.monotonic() - started < 15  # --timeout 1 held, not the request's 60 s
