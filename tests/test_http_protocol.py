"""The V2 REST API over real HTTP against `mlcomponent serve` in a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Server, serve, serve_fixture, write_manifest

MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("echo")
    manifest = write_manifest(folder, "echo.inference", env={"GREETING": "hi"})
    with serve(manifest, data_root=folder / "data") as server:
        yield server


def tensor(name: str, datatype: str, shape: list[int], data: object) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def test_health_and_metadata_shapes(echo: Server) -> None:
    with echo.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        server = client.get("/v2").json()
        assert server["name"] == "mlcomponent" and isinstance(server["extensions"], list)
        meta = client.get(f"/v2/models/{MODEL}").json()
        assert meta["name"] == MODEL and meta["platform"] == "mlcomponent_python"
        assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
        assert client.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "expected"),
    [
        ("FP32", [2, 2], [[1.5, 2], [3, -4.25]], [1.5, 2, 3, -4.25]),
        ("FP64", [3], [1e300, -2.5, 0], [1e300, -2.5, 0]),
        ("INT32", [2, 1], [[2147483647], [-2147483648]], [2147483647, -2147483648]),
        ("str", [2], ["héllo", ""], ["héllo", ""]),
        ("BYTES", [2], ["héllo", ""], ["héllo", ""]),
    ],
)
def test_every_datatype_round_trips(echo: Server, datatype: str, shape: list[int], data: object,
                                    expected: list[object]) -> None:
    body = {"id": "req-1", "inputs": [tensor("x", datatype, shape, data)], "outputs": [{"name": "x"}]}
    with echo.client() as client:
        response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == MODEL and answer["id"] == "req-1"
    wire = "BYTES" if datatype == "str" else datatype  # strings are BYTES on the wire, whatever the request said
    assert answer["outputs"] == [{"name": "x", "datatype": wire, "shape": shape, "data": expected}]


def test_a_str_output_is_bytes_even_when_the_request_sent_only_numbers(echo: Server) -> None:
    body = {"inputs": [tensor("x", "INT32", [1], [1])], "outputs": [{"name": "model_key"}]}
    with echo.client() as client:
        output = client.post(INFER, json=body).json()["outputs"][0]
    assert output["datatype"] == "BYTES" and isinstance(output["data"][0], str)


def test_model_object_is_created_once_and_reused(echo: Server) -> None:
    body = {"inputs": [tensor("x", "INT32", [1], [1])], "outputs": [{"name": "loads"}]}
    with echo.client() as client:
        loads = [client.post(INFER, json=body).json()["outputs"][0]["data"][0] for _ in range(5)]
    assert loads == [1, 1, 1, 1, 1]


def test_parameters_arrive_as_name_value_dicts(echo: Server) -> None:
    body = {"parameters": {"threshold": 0.5, "mode": "fast", "verbose": True},
            "inputs": [tensor("x", "INT32", [1], [1])], "outputs": [{"name": "parameters"}]}
    with echo.client() as client:
        seen = client.post(INFER, json=body).json()["outputs"][0]["data"][0]
    assert seen == repr([{"name": "threshold", "value": 0.5}, {"name": "mode", "value": "fast"},
                         {"name": "verbose", "value": True}])


def test_env_is_applied_before_import_and_model_key_resolves_through_the_box(echo: Server, tmp_path: Path) -> None:
    body = {"inputs": [tensor("x", "INT32", [1], [1])], "outputs": [{"name": "model_key"}, {"name": "greeting"}]}
    with echo.client() as client:
        key, greeting = (o["data"][0] for o in client.post(INFER, json=body).json()["outputs"])
    assert key.endswith("/data/boxes/models/m/model.bin"), key
    assert greeting == "hi"  # spec.env's GREETING, as the module saw it at import


def test_json_without_content_type_is_accepted(echo: Server) -> None:
    with echo.client() as client:
        response = client.post(INFER, content=b'{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"data":[7]}],'
                               b'"outputs":[{"name":"x"}]}', headers={"content-type": "text/plain"})
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [7]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b'{"id": "x"}', 400, "`inputs` is missing"),
        (b'{"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}]}', 400, "unknown datatype 'FP16'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]}', 400,
         "shape [2, 2] needs 4 elements, data has 3"),
        (b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [2147483648]}]}', 400,
         "out of INT32 range"),
        (b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}', 400, "not an integer"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e39]}]}', 400, "overflows FP32"),
        (b'{"inputs": [{"name": "x", "datatype": "str", "shape": [1], "data": [3]}]}', 400, "not a string"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}', 400, "not a number"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}]}', 400, "shape must be a list"),
        (b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}', 400, "`name`"),
        (b'{"inputs": [], "parameters": {"p": [1, 2]}}', 400, "primitive value"),
    ],
)
def test_bad_requests_name_the_fault_and_the_service_stays_healthy(echo: Server, body: bytes, status: int,
                                                                   needle: str) -> None:
    with echo.client() as client:
        response = client.post(INFER, content=body)
        assert response.status_code == status, response.text
        assert needle in response.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200


def test_unknown_model_is_404(echo: Server) -> None:
    with echo.client() as client:
        response = client.post("/v2/models/other/infer", json={"inputs": []})
        assert response.status_code == 404
        assert "unknown model 'other'" in response.json()["error"]
        assert client.get("/v2/models/other").status_code == 404
        assert client.get("/no/such/route").json()["error"].startswith("no route")


@pytest.fixture(scope="module")
def raises(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_fixture(tmp_path_factory.mktemp("raises"), "raises.inference") as server:
        yield server


def test_a_function_that_raises_is_a_500_with_its_message(raises: Server) -> None:
    with raises.client() as client:
        response = client.post(INFER, json={"inputs": []})
        assert response.status_code == 500
        assert response.json() == {"error": "inference raised ValueError: the model cannot handle this input"}
        assert client.get("/v2/health/live").status_code == 200
    assert "Traceback" in raises.output()


@pytest.fixture(scope="module")
def malformed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_fixture(tmp_path_factory.mktemp("malformed"), "malformed.inference") as server:
        yield server


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("shape", "inference output 'y': shape [2] needs 2 elements, data has 3"),
        ("datatype", "inference output 'y': datatype 'FP16' is not one of"),
        ("int_overflow", "out of INT32 range"),
        ("not_a_tuple", "it must return a tuple (outputs, model)"),
        ("nan", "must be finite"),
        ("other", "inference returned outputs of type str"),
    ],
)
def test_malformed_outputs_are_a_500_that_says_so(malformed: Server, mode: str, needle: str) -> None:
    with malformed.client() as client:
        response = client.post(INFER, json={"inputs": [], "parameters": {"mode": mode}})
        assert response.status_code == 500
        assert needle in response.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200
