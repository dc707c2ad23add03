"""Standard Open Inference Protocol clients, unchanged, against every example; and the protocol's
REST schema driven through the service by schemathesis.

The third-party tools pin their own dependencies (protobuf, starlette, ...), so they get their own
virtualenv, ``.venv-clients/`` (built here once with uv from tests/clients/requirements.txt, reused
while that file is unchanged), and run as subprocesses: tests/clients/matrix.py for the clients, the
``st`` command for schemathesis.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, Server, free_port, serve, wait_ready

CLIENTS = ROOT / "tests" / "clients"
VENV = ROOT / ".venv-clients"
EXAMPLES = ROOT / "examples"
FLOWERS = [(5.1, 3.5, 1.4, 0.2, "a"), (5.7, 2.8, 4.1, 1.3, "b"), (7.7, 3.0, 6.1, 2.3, "c")]


def _uv() -> list[str] | None:
    if shutil.which("uv"):
        return ["uv"]
    try:
        import uv

        return [uv.find_uv_bin()]
    except ImportError:
        return None


@pytest.fixture(scope="module")
def clients_python() -> Path:
    """The clients' virtualenv: built on first use (uv: seconds; pip if uv is missing: minutes), then reused."""
    requirements = (CLIENTS / "requirements.txt").read_text()
    python, stamp = VENV / "bin" / "python", VENV / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements:
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    uv = _uv()
    if uv is not None:
        subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(VENV)], check=True)
        subprocess.run([*uv, "pip", "install", "--quiet", "--python", str(python), "-r",
                        str(CLIENTS / "requirements.txt")], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(CLIENTS / "requirements.txt")],
                       check=True)
    stamp.write_text(requirements)
    return python


@dataclass
class Example:
    name: str
    server: Server
    grpc: str
    inputs: list[list[Any]]
    outputs: list[str]
    bad_input: list[list[Any]]
    bad_input_message: str

    @property
    def http(self) -> str:
        return self.server.url.removeprefix("http://")

    def job(self) -> dict[str, Any]:
        return {"http": self.http, "grpc": self.grpc, "model": self.name, "inputs": self.inputs,
                "outputs": self.outputs, "errors": [{"model": "no-such-model", "inputs": self.inputs},
                                                    {"model": self.name, "inputs": self.bad_input}]}


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Example]]:
    """Every example in examples/, trained and served with gRPC; its FILE inputs put in the file box."""
    folder = tmp_path_factory.mktemp("examples")
    data = folder / "data"
    subprocess.run([sys.executable, str(EXAMPLES / "iris" / "train.py"), "--data-root", str(data)], check=True)
    subprocess.run([sys.executable, str(EXAMPLES / "digits" / "train.py"), "--data-root", str(data),
                    "--samples", str(folder / "png")], check=True)
    inbox = data / "boxes" / "users" / "users" / "alice" / "file_groups"
    inbox.mkdir(parents=True)
    with (inbox / "flowers.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "id"])
        writer.writerows(FLOWERS)
    shutil.copy(folder / "png" / "digit-3.png", inbox / "three.png")
    key = "users/alice/file_groups/"
    with ExitStack() as stack:
        served = {}
        for name, manifest in (("iris-classifier", "iris/mlcomponent.yaml"), ("iris-table", "iris/table.yaml"),
                               ("digits", "digits/mlcomponent.yaml")):
            port = free_port()
            served[name] = (stack.enter_context(serve(EXAMPLES / manifest, "--grpc-port", str(port),
                                                      data_root=data)), f"127.0.0.1:{port}")
        for server, _ in served.values():
            wait_ready(server)
        features = [list(row[:4]) for row in FLOWERS]
        yield {
            "iris-classifier": Example(
                "iris-classifier", *served["iris-classifier"], [["features", "FP32", [3, 4], features]],
                ["label", "class_index", "probabilities"], [["features", "FP32", [1, 3], [[1.0, 2.0, 3.0]]]],
                "input 'features': shape [1, 3] does not match the declared shape [-1, 4] (-1: any size)"),
            "iris-table": Example(
                "iris-table", *served["iris-table"], [["table", "BYTES", [1], [key + "flowers.csv"]]],
                ["predictions", "rows"], [["table", "BYTES", [1], [key + "three.png"]]],
                "input 'table': content type 'image/png' does not match the declared 'text/csv'"),
            "digits": Example(
                "digits", *served["digits"], [["image", "BYTES", [1], [key + "three.png"]]],
                ["label", "probabilities", "preview"], [["picture", "BYTES", [1], [key + "three.png"]]],
                "input 'picture' is not declared by the function (declared inputs: image)"),
        }


# what each client says for the status of an unknown model and of a bad input
STATUSES = {"triton-http-binary": ("404", "400"), "triton-http-json": ("404", "400"),
            "triton-grpc": ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"),
            "kserve-rest": ("404", "400"), "kserve-grpc": ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")}


@pytest.mark.parametrize("client", list(STATUSES))
def test_every_standard_client_reads_every_output_of_every_example(clients_python: Path,
                                                                   examples: dict[str, Example], client: str) -> None:
    ran = subprocess.run([str(clients_python), str(CLIENTS / "matrix.py"), client], capture_output=True, text=True,
                         input=json.dumps([example.job() for example in examples.values()]), timeout=300)
    assert ran.returncode == 0, ran.stderr[-5000:]
    reports = dict(zip(examples, json.loads(ran.stdout), strict=True))
    over_grpc = client.endswith("grpc")
    file_datatype = "BYTES" if over_grpc else "FILE"  # gRPC clients cannot read a FILE tensor at all
    box = examples["iris-table"].server.data_root / "boxes" / "users"

    for name, report in reports.items():
        assert report["live"] and report["ready"] and report["model_ready"], (name, report)
        assert report["errors"][0]["status"] == STATUSES[client][0]
        assert "unknown model 'no-such-model'" in report["errors"][0]["message"]
        assert report["errors"][1]["status"] == STATUSES[client][1]
        assert examples[name].bad_input_message in report["errors"][1]["message"], report["errors"][1]
        if "metadata" in report:
            assert report["metadata"]["platform"] == "mlcomponent_python"

    iris = reports["iris-classifier"]["outputs"]
    assert iris["label"] == {"datatype": "BYTES", "shape": [3], "value": ["setosa", "versicolor", "virginica"]}
    assert iris["class_index"] == {"datatype": "INT32", "shape": [3], "value": [0, 1, 2]}
    assert iris["probabilities"]["shape"] == [3, 3] and iris["probabilities"]["datatype"] == "FP32"
    assert all(abs(sum(row) - 1) < 1e-5 for row in iris["probabilities"]["value"])

    table = reports["iris-table"]["outputs"]
    assert table["rows"]["value"] == [3]
    assert table["predictions"]["datatype"] == file_datatype and table["predictions"]["shape"] == [1]
    written = list(csv.DictReader((box / table["predictions"]["value"][0]).open()))
    assert [row["species"] for row in written] == ["setosa", "versicolor", "virginica"]

    digits = reports["digits"]["outputs"]
    assert digits["label"] == {"datatype": "INT32", "shape": [1], "value": [3]}
    assert digits["probabilities"]["shape"] == [10] and max(digits["probabilities"]["value"]) > 0.5
    assert digits["preview"]["datatype"] == file_datatype
    assert (box / digits["preview"]["value"][0]).read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- schemathesis


def schema_for(example: Example, folder: Path) -> Path:
    """The protocol's document pointed at one served model, unversioned paths added, a valid request in."""
    document = yaml.safe_load((CLIENTS / "open_inference_rest.yaml").read_text().replace("MODEL_NAME", example.name))
    paths = document["paths"]
    for path, item in list(paths.items()):
        if "{MODEL_VERSION}" in path:
            paths[path.replace("/versions/{MODEL_VERSION}", "")] = {
                method: operation | {"operationId": operation["operationId"].replace("-version", "")}
                for method, operation in item.items() if method != "parameters"}
    body = {"id": "schemathesis", "outputs": [{"name": n} for n in example.outputs], "inputs": [
        {"name": name, "datatype": datatype, "shape": shape, "data": values}
        for name, datatype, shape, values in example.inputs]}
    for path in (f"/v2/models/{example.name}/infer", f"/v2/models/{example.name}/versions/{{MODEL_VERSION}}/infer"):
        paths[path]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/inference_request"}, "example": body}}}
    target = folder / f"{example.name}.yaml"
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


@pytest.mark.parametrize("name", ["iris-classifier", "iris-table", "digits"])
def test_schemathesis_finds_no_5xx_and_every_answer_matches_the_protocols_schema(
        clients_python: Path, examples: dict[str, Example], name: str, tmp_path: Path) -> None:
    example = examples[name]
    junit = tmp_path / "junit.xml"
    server_paths = [] if name == "iris-classifier" else ["--exclude-path-regex", "^/v2/?$|^/v2/health/"]  # once is enough
    ran = subprocess.run(
        [str(clients_python.parent / "st"), "run", str(schema_for(example, tmp_path)), "--url", example.server.url,
         *server_paths, "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                                    "response_schema_conformance,response_headers_conformance,unsupported_method",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "10", "--seed", "7", "--workers", "1",
         "--report", "junit", "--report-junit-path", str(junit), "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-8000:] + ran.stderr[-2000:]
    operations = {case.get("name", "") for case in ElementTree.parse(junit).getroot().iter("testcase")}
    assert f"POST /v2/models/{name}/infer" in operations, operations
    assert example.server.process.poll() is None
