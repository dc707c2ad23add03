"""The README's example: the iris classifier, trained by its script, served on local boxes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import ROOT, Server, run_cli, serve, wait_ready

EXAMPLE = ROOT / "examples" / "iris"


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("iris-data")
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--data-root", str(data)], check=True)
    with serve(EXAMPLE / "mlcomponent.yaml", data_root=data) as server:
        wait_ready(server)
        yield server


def test_example_validates_with_its_docstring_spec() -> None:
    result = run_cli("validate", str(EXAMPLE / "mlcomponent.yaml"))
    assert result.returncode == 0, result.stderr
    assert "docstring spec OK (1 inputs, 3 outputs, 1 parameters, with an example)" in result.stdout


def test_example_predicts_the_right_species(iris: Server) -> None:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 4],
                        "data": [[5.1, 3.5, 1.4, 0.2], [5.7, 2.8, 4.1, 1.3], [7.7, 3.0, 6.1, 2.3]]}]}
    with iris.client() as client:
        response = client.post("/v2/models/iris-classifier/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"label", "class_index"}  # `probabilities` is optional: not sent by default
    assert outputs["label"]["data"] == ["setosa", "versicolor", "virginica"]
    assert outputs["class_index"] == {"name": "class_index", "datatype": "INT32", "shape": [3], "data": [0, 1, 2]}


def test_example_refuses_an_empty_batch_with_a_400(iris: Server) -> None:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [0, 4], "data": []}]}
    with iris.client() as client:
        response = client.post("/v2/models/iris-classifier/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "features has no rows (shape [0, 4]); send at least one row of four measurements"


def test_example_parameter_and_env_change_the_answer(iris: Server) -> None:
    """The manifest's spec.env says IRIS_UNSURE_LABEL=unsure; without it the module answers "?"."""
    body = {"parameters": {"min_confidence": 1.0}, "outputs": [{"name": "label"}, {"name": "probabilities"}],
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.7, 2.8, 4.1, 1.3]}]}
    with iris.client() as client:
        outputs = client.post("/v2/models/iris-classifier/infer", json=body).json()["outputs"]
    assert outputs[0]["data"] == ["unsure"]
    assert outputs[1]["shape"] == [1, 3] and abs(sum(outputs[1]["data"]) - 1) < 1e-5
