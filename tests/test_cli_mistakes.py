"""A newcomer's mistakes at the command line: each is answered in one line that says what to do.

No traceback, no usage block, and the line names the option or file to change. Each case
here has its entry in docs/troubleshooting.md.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import pytest

from tests.checkout import Checkout
from tests.conftest import S3_ENV, S3Endpoint
from tests.support import (
    ENTRYPOINTS,
    ROOT,
    SEED_MANIFEST,
    Server,
    free_port,
    poll,
    run_cli,
    serve,
    stop_group,
    wait_until_live,
    write_manifest,
)

TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()


def one_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single line a failed command printed on stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    return lines[0]


# --------------------------------------------------------------------------- validate checks the entry point


@pytest.mark.parametrize(("function", "expected"), [
    ("ech.inference", "no module named 'ech' under pythonPath '{path}'; did you mean 'echo.inference'?"),
    ("echo.inferenc", "module 'echo' has no attribute 'inferenc' (pythonFunction 'echo.inferenc'); "
                      "did you mean 'echo.inference'?"),
    ("nosuch.inference", "no module named 'nosuch' under pythonPath '{path}' (there: bad_docstring, "),
])
def test_validate_imports_the_entry_point_and_suggests_names(tmp_path: Path, function: str, expected: str) -> None:
    manifest = write_manifest(tmp_path, function)
    line = one_line(run_cli("validate", str(manifest)))
    yaml_line = next(n for n, text in enumerate(manifest.read_text().splitlines(), 1) if "pythonFunction:" in text)
    assert line.startswith(f"{manifest}:{yaml_line}: spec.mlService.inference.entryPoint.pythonFunction: "), line
    assert expected.format(path=ENTRYPOINTS) in line


@pytest.mark.parametrize(("function", "suggestion"), [
    ("irs.predict.inference", "did you mean 'iris.predict.inference'?"),
    ("iris.predikt.inference", "did you mean 'iris.predict.inference'?"),
    ("iris.nosuch.inference", "no module named 'iris.nosuch' under pythonPath"),
])
def test_validate_catches_a_misspelled_module_in_a_package_that_is_here(tmp_path: Path, function: str,
                                                                        suggestion: str) -> None:
    manifest = tmp_path / "iris.yaml"
    manifest.write_text((ROOT / "examples/iris/mlcomponent.yaml").read_text().replace("iris.predict.inference", function))
    (tmp_path / "iris").symlink_to(ROOT / "examples/iris/iris")
    line = one_line(run_cli("validate", str(manifest)))
    assert suggestion in line and "pythonFunction" in line
    served = run_cli("serve", str(manifest), "--port", str(free_port()), timeout=60)  # serve refuses it the same way
    assert suggestion in one_line(served)


def test_a_misspelled_import_inside_the_package_is_named_as_such(tmp_path: Path) -> None:
    package = tmp_path / "module" / "scoring"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SCALE = 2\n")
    (package / "predict.py").write_text("import scoring.helper\n\n\ndef inference(parameters, inputs, output_fields, "
                                        "model_key, model=None):\n    return [], model\n")
    manifest = write_manifest(tmp_path, "scoring.predict.inference", python_path=str(tmp_path / "module"))
    line = one_line(run_cli("validate", str(manifest)))
    assert line.endswith(f"importing 'scoring.predict' failed: it imports 'scoring.helper', which is not under "
                         f"pythonPath '{tmp_path / 'module'}'; did you mean 'scoring.helpers'?"), line


def test_validate_names_pythonpath_when_that_is_the_typo(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference", python_path=str(ENTRYPOINTS.parent / "entrypoint"))
    line = one_line(run_cli("validate", str(manifest)))
    assert ": spec.mlService.inference.entryPoint.pythonPath: pythonPath " in line
    assert f"did you mean '{ENTRYPOINTS}'?" in line


def test_validate_says_not_checked_only_away_from_any_code() -> None:
    result = run_cli("validate", str(SEED_MANIFEST))
    assert result.returncode == 0, result.stderr
    assert "entry point not checked: no Python code under pythonPath" in result.stdout
    for example in ("examples/iris/mlcomponent.yaml", "examples/iris/table.yaml", "examples/digits/mlcomponent.yaml"):
        checked = run_cli("validate", str(ROOT / example))
        assert checked.returncode == 0 and "docstring spec OK" in checked.stdout, checked.stdout + checked.stderr
        assert "not checked" not in checked.stdout


# --------------------------------------------------------------------------- serve


def test_a_taken_port_is_one_line_naming_port_before_anything_is_announced(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", str(manifest), "--port", str(port), "--data-root", str(tmp_path / "data"), timeout=60)
    line = one_line(result)
    assert line.startswith(f"cannot start: port {port} on 127.0.0.1 is already in use"), line
    assert re.search(r"pick another port with --port, e\.g\. --port \d+$", line), line
    assert "serving" not in result.stdout + result.stderr


def test_a_host_that_is_not_here_is_one_line_naming_host(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    line = one_line(run_cli("serve", str(manifest), "--host", "192.0.2.1", "--port", str(free_port())))
    assert line.startswith("cannot start: --host '192.0.2.1' is not an address of this machine"), line
    assert "--host 127.0.0.1" in line


def test_a_missing_dependency_of_the_module_is_one_line(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "import_error.inference")
    for command in (["validate"], ["serve", "--port", str(free_port())]):
        line = one_line(run_cli(command[0], str(manifest), *command[1:], timeout=60))
        assert "importing 'import_error' failed: it imports 'a_module_that_does_not_exist', which is not installed" in line
        assert "install the package that provides 'a_module_that_does_not_exist'" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["serve", "{tmp}/nope.yaml"], "{tmp}/nope.yaml: no such file; give the path of a manifest (mlcomponent.yaml)"),
    (["validate", "{tmp}/nope.yaml"], "{tmp}/nope.yaml: no such file; give the path of a manifest (mlcomponent.yaml)"),
    (["render", "{tmp}/nope.yaml"], "{tmp}/nope.yaml: no such file; give the path of a manifest (mlcomponent.yaml)"),
    (["serve", "{tmp}"], "{tmp}: is a folder; give the manifest file in it, e.g. {tmp}/mlcomponent.yaml"),
    (["validate", "{tmp}"], "{tmp}: is a folder; give the manifest file in it, e.g. {tmp}/mlcomponent.yaml"),
    (["serve", "{manifest}", "--boxes", "{tmp}/boxes.yaml"],
     "mlcomponent serve: Invalid value for '--boxes': File '{tmp}/boxes.yaml' does not exist. "
     "(see 'mlcomponent serve --help')"),
    (["serve", "{manifest}", "--data-root", "{manifest}"],
     "mlcomponent serve: Invalid value for '--data-root': Directory '{manifest}' is a file. "
     "(see 'mlcomponent serve --help')"),
    (["serve", "{manifest}", "--auth-token-file", "{tmp}/token"],
     "mlcomponent serve: Invalid value for '--auth-token-file': File '{tmp}/token' does not exist. "
     "(see 'mlcomponent serve --help')"),
    (["serve", "{manifest}", "--port", "80800"],
     "mlcomponent serve: Invalid value for '--port': 80800 is not in the range 1<=x<=65535. "
     "(see 'mlcomponent serve --help')"),
    (["serve", "{manifest}", "--prot", "8081"],
     "mlcomponent serve: No such option '--prot'. (Did you mean one of: '--host', '--port'?) "
     "(see 'mlcomponent serve --help')"),
    (["infer", "http://127.0.0.1:{port}", "-f", "image=@{tmp}/cat.png"],
     "mlcomponent infer: Invalid value for -f: {tmp}/cat.png is not a file (see 'mlcomponent infer --help')"),
    (["infer", "http://127.0.0.1:{port}", "-i", "x=1"],
     "error: cannot connect to http://127.0.0.1:{port}: [Errno 111] Connection refused; "
     "is the service running there? (mlcomponent serve MANIFEST)"),
    (["init", "{manifest}/module"], "init: cannot write {manifest}/module"),
    (["serv", "{manifest}"], "mlcomponent: No such command 'serv'. Did you mean 'serve'? (see 'mlcomponent --help')"),
])
def test_bad_paths_and_options_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    values = {"tmp": str(tmp_path), "manifest": str(manifest), "port": str(free_port())}
    line = one_line(run_cli(*[arg.format(**values) for arg in args]), code=2 if "(see '" in expected else 1)
    assert line.startswith(expected.format(**values)), line


def test_operator_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "kubeconfig"), "KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": ""}
    line = one_line(run_cli("operator", env=env, timeout=60))
    assert line.startswith(f"mlcomponent operator: no cluster to connect to: cannot load the kubeconfig {tmp_path}/kubeconfig")
    assert line.endswith("set KUBECONFIG to a cluster's kubeconfig, or run the operator in the cluster "
                         "(kubectl apply -f deploy/)")


def test_operator_without_the_kubernetes_extra_names_the_extra(fresh_checkout: Checkout,
                                                               readme_first_command: Server) -> None:
    """In the .venv the README's first command makes (the examples extra only), as a newcomer has it."""
    probe = fresh_checkout.bash("python -c 'import kopf'")
    assert probe.returncode != 0 and "No module named 'kopf'" in probe.stderr, "kopf is installed there after all"
    result = fresh_checkout.bash("mlcomponent operator")
    assert one_line(result) == ("mlcomponent operator: needs 'kopf', which comes with the 'kubernetes' extra: "
                                "pip install 'mlcomponent[kubernetes]'")


# --------------------------------------------------------------------------- help


def test_help_lists_every_command_with_its_whole_description() -> None:
    from mlcomponent.cli import main

    result = run_cli("--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("Commands:", 1)[1]
    assert "..." not in listing
    flattened = " ".join(listing.split())
    assert isinstance(main, click.Group)
    for name, command in main.commands.items():
        description = command.get_short_help_str(limit=10_000)
        assert f"{name} {description}" in flattened, (name, description)
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


# --------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("message", [
    "is already in use (by another `mlcomponent serve`?); stop that, or pick another port with --port",
    "is not an address of this machine",
    "pip install 'mlcomponent[kubernetes]'",
    "no cluster to connect to",
    "which is not installed in this Python",
    "did you mean 'iris.predict.inference'?",
    "no such file; give the path of a manifest",
    "is a folder; give the manifest file in it",
    "not UTF-8 text",
    "refused: anchors and aliases expand it past 10,000 values",
    "nested deeper than 32 levels",
    "contains a NUL character",
    "duplicate env name",
    "is not a relative path inside the box",
    "is not a folder; it is relative to the manifest's folder",
    "Invalid value for",
    "is the service running there?",
    "'inputs' and 'parameters' are swapped; write def inference(parameters, inputs, output_fields, model_key, "
    "model=None)",
    "missing 'model_key'",
    "failed: SyntaxError in predict.py, line 14:",
    "is not ready: cannot load the module: importing",
    "unknown section 'Input:'; did you mean 'Inputs:'?",
    "is the model file there?",
    "it must return a tuple (outputs, model) (predict.inference in predict.py)",
    "return what the docstring's Outputs: declares, or change the declaration",
    '"reason": "warm-up with the docstring\'s Example failed: ',
    "cannot be reached (EndpointConnectionError); check `endpoint:` in --boxes",
    "the credentials are refused (InvalidAccessKeyId)",
    "no such bucket; create it, or set `bucket:` for the box in --boxes",
    "did you mean 'top_k'?",
    "has no extension that tells its content type, and the function declares 'image/png'",
    "must be a relative key inside the file box: it must not contain '..', '.' or empty segments",
    "duplicate key 'name' (first on line 5); the later one would win here, and kubectl refuses the file",
    "Example not run",
])
def test_troubleshooting_shows_each_message(message: str) -> None:
    assert message in TROUBLESHOOTING


# --------------------------------------------------------------------------- a first module's run-time mistakes

SPEC = '''"""Score rows of two numbers.

    Inputs:
        x (FP32, shape=[-1, 2]): rows.

    Outputs:
        y (FP32, shape=[-1]): one score per row.

    Example:
        inputs:
          x: [[1, 2]]
    """
'''
LOAD = """    if model is None:
        with open(model_key) as stream:
            model = float(stream.read())
"""
GOOD_RETURN = '    return [{"name": "y", "data": [model * sum(inputs[0]["data"])]}], model\n'
SIGNATURE = "parameters, inputs, output_fields, model_key, model=None"


def first_module(tmp_path: Path, *, signature: str = SIGNATURE, spec: str = SPEC, body: str = LOAD + GOOD_RETURN,
                 model: str | None = "2") -> Path:
    """A module as a newcomer writes it, its model in the local model box (unless ``model`` is None)."""
    folder = tmp_path / "module"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predict.py").write_text(f"def inference({signature}):\n    {spec}{body}")
    manifest = write_manifest(tmp_path, "predict.inference", python_path=str(folder))
    box = tmp_path / "data" / "boxes" / "models" / "m"  # modelPath /models/model.bin, locally
    box.mkdir(parents=True, exist_ok=True)
    if model is not None:
        (box / "model.bin").write_text(model)
    return manifest


def test_validate_runs_a_good_example_through_the_function(tmp_path: Path) -> None:
    result = run_cli("validate", str(first_module(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "predict.inference: Example OK (ran through the function in a worker)" in result.stdout


@pytest.mark.parametrize(("mistake", "module", "expected"), [
    ("forgot , model", {"body": LOAD + '    return [{"name": "y", "data": [1.0]}]\n'},
     "inference returned list; it must return a tuple (outputs, model) (predict.inference in predict.py)"),
    ("missing model file", {"model": None},
     "FileNotFoundError: [Errno 2] No such file or directory: '{model}' (predict.py, line 15); is the model file "
     "there? modelPath '/models/model.bin' is {model} here: put the model there, or fix "
     "spec.mlService.inference.model.modelPath"),
    ("wrong output shape", {"body": LOAD + '    return [{"name": "y", "data": [1.0, 2.0], "shape": [1, 2]}], model\n'},
     "output 'y': shape [1, 2] does not match the declared [-1]"),
    ("swapped arguments", {"signature": "inputs, parameters, output_fields, model_key, model=None"},
     "'inputs' and 'parameters' are swapped; write def inference(parameters, inputs, output_fields, model_key, "
     "model=None)"),
    ("missing model_key", {"signature": "parameters, inputs, output_fields, model=None"},
     "cannot be called as inference(parameters, inputs, output_fields, model_key, model): missing 'model_key'"),
])
def test_validate_names_each_first_module_mistake_in_one_line(tmp_path: Path, mistake: str, module: dict[str, str],
                                                              expected: str) -> None:
    manifest = first_module(tmp_path, **module)
    line = one_line(run_cli("validate", str(manifest)))
    model = tmp_path / "data" / "boxes" / "models" / "m" / "model.bin"
    assert expected.format(model=model) in line, line
    if mistake == "wrong output shape":
        assert line.endswith("; return what the docstring's Outputs: declares, or change the declaration"), line
    if "arguments" not in mistake and "model_key" not in mistake:  # a run-time mistake: --no-run skips it
        skipped = run_cli("validate", "--no-run", str(manifest))
        assert skipped.returncode == 0 and "Example" not in skipped.stdout, skipped.stdout + skipped.stderr


def test_a_failed_warmup_says_why_to_every_caller_and_logs_the_users_frames_once(tmp_path: Path) -> None:
    manifest = first_module(tmp_path, model=None)
    cause = "FileNotFoundError: [Errno 2] No such file or directory: "
    with serve(manifest, data_root=tmp_path / "data") as server, server.client() as client:
        poll(lambda: "reason" in client.get("/v2/health/ready").json(), "the warm-up to fail")
        ready = client.get("/v2/health/ready")
        reason = ready.json()["reason"]
        assert ready.status_code == 503 and reason.startswith("warm-up with the docstring's Example failed: " + cause)
        assert reason.endswith("(predict.py, line 15)"), reason
        assert client.get("/v2/models/test-model/ready").json()["reason"] == reason
        assert client.get("/v2/models/test-model").json()["parameters"]["reason"] == reason
        infer = client.post("/v2/models/test-model/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
        assert infer.status_code == 503
        assert infer.json()["error"] == f"model 'test-model' is not ready: {reason}"
    log = server.output()
    assert log.count("Traceback") == 1, log
    assert 'File "' + str(tmp_path / "module" / "predict.py") + '", line 15, in inference' in log
    assert "mlcomponent/runtime" not in log and "asyncio" not in log, log  # the user's own frames only


def test_a_misspelled_section_header_fails_validate_with_a_did_you_mean(tmp_path: Path) -> None:
    manifest = first_module(tmp_path, spec=SPEC.replace("Inputs:", "Input:"))
    line = one_line(run_cli("validate", str(manifest)))
    assert "docstring line 3 (source line 4): unknown section 'Input:'; did you mean 'Inputs:'?" in line, line


def test_file_keys_without_an_extension_say_how_to_give_a_content_type() -> None:
    from mlcomponent.errors import BadRequest
    from mlcomponent.protocol.request import decode_request
    from mlcomponent.spec.docstring import parse_docstring

    spec = parse_docstring("Scan.\n\n    Inputs:\n        scan (FILE, content_type=image/png): a scan.\n")

    def message(key: str) -> str:
        with pytest.raises(BadRequest) as raised:
            decode_request({"inputs": [{"name": "scan", "datatype": "FILE", "shape": [1], "data": key}]}, spec)
        return raised.value.message

    assert message("uploads/scan") == (
        "input 'scan': the key 'uploads/scan' has no extension that tells its content type, and the function "
        "declares 'image/png'; send \"parameters\": {\"content_type\": \"image/png\"} with the input, or name the "
        "key with its extension")
    for key in ("../x", "../x.png", "/etc/x"):  # confinement first, whatever the extension
        assert message(key) == (f"input 'scan': key {key!r} must be a relative key inside the file box: it must "
                                "not contain '..', '.' or empty segments, nor start with '/'")
    assert "None" not in message("uploads/scan")


def test_inits_gitignore_keeps_the_secret_and_local_data_out_of_git(tmp_path: Path) -> None:
    folder = tmp_path / "my-module"
    assert run_cli("init", str(folder)).returncode == 0
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "data" / "files.key").write_text("secret")
    for local in ("data/boxes/users/users/alice/file_groups/photo.png", "data/files/1/x", "data/cache/b/x"):
        (folder / local).parent.mkdir(parents=True, exist_ok=True)
        (folder / local).write_text("x")
    candidates = ["data/files.key", "data/boxes/users/users/alice/file_groups/photo.png", "data/files/1/x",
                  "data/cache/b/x", "data/boxes/my-module-data/users/developer/file_groups/models/model.json"]
    ignored = subprocess.run(["git", "check-ignore", *candidates], cwd=folder, capture_output=True, text=True).stdout
    assert ignored.split() == candidates[:-1]  # all but the model the module ships with


def test_a_syntax_error_in_the_module_is_one_line(tmp_path: Path) -> None:
    manifest = first_module(tmp_path, body="    return [}\n")
    expected = "importing 'predict' failed: SyntaxError in predict.py, line 14: closing parenthesis '}' does not " \
               "match opening parenthesis '[': return [}"
    assert one_line(run_cli("validate", str(manifest))).endswith(expected)
    served = one_line(run_cli("serve", str(manifest), "--port", str(free_port()), timeout=60))
    assert served == f"cannot start: {expected}"


def test_an_unreachable_s3_box_at_start_up_is_one_line(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    endpoint = f"http://127.0.0.1:{free_port()}"
    boxes = tmp_path / "boxes.yaml"
    boxes.write_text(f"boxes:\n  models:\n    s3:\n      endpoint: {endpoint}\n      region: us-east-1\n")
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1"}
    line = one_line(run_cli("serve", str(manifest), "--boxes", str(boxes), "--port", str(free_port()),
                            "--data-root", str(tmp_path / "data"), env=env, timeout=120))
    assert line == (f"cannot start: S3 box 'models' (bucket 'models' at {endpoint}) cannot be reached "
                    "(EndpointConnectionError); check `endpoint:` in --boxes, or that the S3 service is up")


def test_an_s3_bucket_that_is_not_there_at_start_up_is_one_line(tmp_path: Path, s3: S3Endpoint) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    boxes = tmp_path / "boxes.yaml"
    boxes.write_text(f"boxes:\n  models:\n    s3:\n      endpoint: {s3.url}\n      region: us-east-1\n"
                     "      bucket: no-such-bucket-here\n")
    line = one_line(run_cli("serve", str(manifest), "--boxes", str(boxes), "--port", str(free_port()),
                            "--data-root", str(tmp_path / "data"), env=S3_ENV, timeout=120))
    assert line == (f"cannot start: S3 box 'models' (bucket 'no-such-bucket-here' at {s3.url}): no such bucket; "
                    "create it, or set `bucket:` for the box in --boxes")


def test_reload_with_a_broken_module_answers_503_with_the_cause_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "module"
    folder.mkdir()
    source = folder / "echo.py"
    source.write_text((ENTRYPOINTS / "echo.py").read_text())
    manifest = write_manifest(tmp_path, "echo.inference", python_path=str(folder))
    infer = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]}
    with serve(manifest, "--reload", data_root=tmp_path / "data", cwd=folder) as server, \
            server.client(timeout=10) as client:
        assert client.post("/v2/models/test-model/infer", json=infer).status_code == 200
        source.write_text(source.read_text() + "\ndef broken(:\n")
        deadline = time.monotonic() + 90
        while True:  # until the reloaded process answers; each answer must come at once (10 s timeout)
            assert time.monotonic() < deadline, server.output()
            try:
                answer = client.post("/v2/models/test-model/infer", json=infer)
            except httpx.TransportError:
                time.sleep(0.05)
                continue  # the old process stopped and the new one is not listening yet
            if answer.status_code == 503 and "(stopping)" not in answer.text:  # not the old process, draining
                break
            time.sleep(0.05)
        assert answer.json()["error"].startswith(
            "model 'test-model' is not ready: cannot load the module: importing 'echo' failed: SyntaxError in "
            "echo.py, line "), answer.text
        assert answer.headers["retry-after"] == "1"


def test_an_unknown_parameter_gets_a_did_you_mean_and_shapes_read_as_in_the_docstring() -> None:
    from mlcomponent.errors import BadRequest
    from mlcomponent.protocol.request import decode_request
    from mlcomponent.spec.docstring import parse_docstring

    spec = parse_docstring("S.\n\n    Inputs:\n        x (FP32, shape=[-1, 4]): rows.\n\n    Parameters:\n"
                           "        top_k (int, default=3): how many.\n")
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    with pytest.raises(BadRequest) as raised:
        decode_request({"inputs": [x], "parameters": {"topk": 2}}, spec)
    assert raised.value.message == "parameter 'topk' is not declared (declared parameters: top_k); did you mean 'top_k'?"
    with pytest.raises(BadRequest) as raised:
        decode_request({"inputs": [{**x, "shape": [4], "data": [1, 2, 3, 4]}]}, spec)
    assert raised.value.message == "input 'x': shape [4] does not match the declared shape [-1, 4] (-1: any size)"


def test_max_batch_size_without_batching_refuses_before_any_worker_is_announced(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    result = run_cli("serve", str(manifest), "--max-batch-size", "8", "--port", str(free_port()),
                     "--data-root", str(tmp_path / "data"), timeout=60)
    line = one_line(result)
    assert line.startswith("cannot start: echo.inference: --max-batch-size/--max-batch-delay need"), line
    assert "started" not in result.stdout + result.stderr


def test_duplicate_keys_in_a_manifest_fail_validate_with_the_yaml_path(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    text = manifest.read_text().replace("  name: test-model\n", "  name: test-model\n  name: other\n", 1)
    manifest.write_text(text)
    line = one_line(run_cli("validate", str(manifest)))
    number = text.splitlines().index("  name: other") + 1
    assert line == (f"{manifest}:{number}: metadata.name: duplicate key 'name' (first on line {number - 1}); the "
                    "later one would win here, and kubectl refuses the file: keep one")


def test_serve_example_passes_one_port(tmp_path: Path) -> None:
    """The script's arguments replace its defaults (mlcomponent stands in for itself by printing its argv)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "serve-example.sh", tmp_path / "scripts")
    (tmp_path / "scripts" / "setup.sh").write_text("#!/bin/sh\n")
    model = tmp_path / "examples/iris/data/boxes/iris-data/users/developer/file_groups/models/iris.joblib"
    model.parent.mkdir(parents=True)
    model.write_text("")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "mlcomponent").write_text('#!/bin/sh\necho "$@"\n')
    for script in ("scripts/setup.sh", ".venv/bin/mlcomponent"):
        (tmp_path / script).chmod(0o755)
    printed = subprocess.run(["bash", str(tmp_path / "scripts" / "serve-example.sh"), "--port", "9000"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert printed == ["serve", "examples/iris/mlcomponent.yaml", "--host", "127.0.0.1", "--port", "9000"]
    printed = subprocess.run(["bash", str(tmp_path / "scripts" / "serve-example.sh")], capture_output=True,
                             text=True, check=True, env={**os.environ, "PORT": "8090"}).stdout.split()
    assert printed == ["serve", "examples/iris/mlcomponent.yaml", "--host", "127.0.0.1", "--port", "8090"]


def test_the_readme_and_the_docstring_spec_say_where_things_go() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "/tmp/" not in readme  # outputs go beside the example (data/ is ignored by git), not a fixed /tmp folder
    spec = (ROOT / "docs" / "docstring-spec.md").read_text()
    assert "relative to the module's own folder" not in spec
    assert "relative to the folder of the Python file\nthat defines the function" in spec


def test_refused_s3_credentials_at_start_up_are_one_line(tmp_path: Path) -> None:
    """moto in server mode checks signatures only when asked to (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    port = free_port()
    log = tmp_path / "moto.log"
    with log.open("wb") as sink:
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(endpoint, moto, log, path="/moto-api/")
        manifest = write_manifest(tmp_path, "echo.inference")
        boxes = tmp_path / "boxes.yaml"
        boxes.write_text(f"boxes:\n  models:\n    s3:\n      endpoint: {endpoint}\n      region: us-east-1\n")
        line = one_line(run_cli("serve", str(manifest), "--boxes", str(boxes), "--port", str(free_port()),
                                "--data-root", str(tmp_path / "data"), timeout=120,
                                env={"AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong"}))
    finally:
        stop_group(moto)
    assert line == (f"cannot start: S3 box 'models' (bucket 'models' at {endpoint}): the credentials are refused "
                    "(InvalidAccessKeyId); check the access and secret keys the --boxes file names (accessKeyEnv, "
                    "secretKeyEnv) or AWS_ACCESS_KEY_ID")
