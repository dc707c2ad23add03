"""A newcomer's mistakes at the command line: each is answered in one line that says what to do.

No traceback, no usage block, and the line names the option or file to change. Each case
here has its entry in docs/troubleshooting.md.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import click
import pytest

from tests.checkout import Checkout
from tests.support import ENTRYPOINTS, ROOT, SEED_MANIFEST, Server, free_port, run_cli, write_manifest

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
])
def test_troubleshooting_shows_each_message(message: str) -> None:
    assert message in TROUBLESHOOTING
