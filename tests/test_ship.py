"""build, push, upload, status: the generated Containerfile, the engines' command lines, uploads into
a real S3 (moto) and a folder box, the status view, and each command's failure in one line.

Cluster-side behaviour (deploy, the operator's model poll, the files Secret) is in
tests/test_ship_cluster.py (a real kube-apiserver) and tests/test_ship_node.py (a real node).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcomponent import __version__
from mlcomponent.ship.build import build_command, find_engine, push_command
from mlcomponent.ship.deploy import outcome, summary, view
from mlcomponent.ship.upload import expected_etag
from tests.conftest import S3_ENV, S3Endpoint, boxes_file
from tests.support import HTTP, ROOT, free_port, run_cli, serve

IRIS = ROOT / "examples" / "iris"


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("$ ")]
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(lines) >= 1
    return lines[-1]


@pytest.fixture
def module(tmp_path: Path) -> Path:
    """A module as `mlcomponent init` makes it."""
    folder = tmp_path / "scorer"
    made = run_cli("init", str(folder))
    assert made.returncode == 0, made.stderr
    return folder


# --------------------------------------------------------------------------- build: the Containerfile


def test_build_print_puts_requirements_before_the_code_and_no_library(module: Path) -> None:
    (module / "requirements.txt").write_text("numpy\n")
    printed = run_cli("build", str(module / "mlcomponent.yaml"), "--print", "--from", "localhost/base:1")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    steps = [line for line in lines if not line.startswith("#")]
    assert steps[0] == "FROM localhost/base:1"
    install = next(i for i, line in enumerate(steps) if "-r /tmp/mlcomponent-build/requirements.txt" in line)
    copy_code = steps.index("COPY scorer ./scorer")
    assert steps.index("COPY requirements.txt /tmp/mlcomponent-build/requirements.txt") < install < copy_code
    assert "RUN mkdir -p /home/app/users/tmp && chown 1000:1000 /home/app/users/tmp" in steps
    assert steps[-1] == "USER 1000:1000" and "WORKDIR /home/app" in steps
    assert "mlcomponent==" not in printed.stdout, "the library is baked in without --with-library"
    assert "data" not in " ".join(s for s in steps if s.startswith("COPY")), "the local boxes went into the image"


def test_build_print_installs_pyproject_dependencies_and_with_library_pins_this_version(module: Path) -> None:
    (module / "pyproject.toml").write_text('[project]\nname = "scorer"\nversion = "1"\n'
                                           'dependencies = ["numpy>=1.26", "joblib"]\n')
    printed = run_cli("build", str(module / "mlcomponent.yaml"), "--print", "--with-library")
    assert printed.returncode == 0, printed.stderr
    steps = printed.stdout.splitlines()
    assert steps[2] == "FROM docker.io/library/python:3.11-slim"  # the documented default
    deps = next(i for i, s in enumerate(steps) if s.endswith("'numpy>=1.26' joblib"))
    library = next(i for i, s in enumerate(steps) if s.endswith(f"mlcomponent=={__version__}"))
    assert deps < library < steps.index("COPY scorer ./scorer")


def test_build_print_copies_the_code_from_under_python_path(tmp_path: Path) -> None:
    data = yaml.safe_load((IRIS / "mlcomponent.yaml").read_text())
    data["spec"]["mlService"]["inference"]["entryPoint"]["pythonPath"] = "src"
    (tmp_path / "src").mkdir()
    shutil.copytree(IRIS / "iris", tmp_path / "src" / "iris")
    (tmp_path / "mlcomponent.yaml").write_text(yaml.safe_dump(data))
    printed = run_cli("build", str(tmp_path / "mlcomponent.yaml"), "--print")
    assert printed.returncode == 0, printed.stderr
    assert "COPY src/iris ./src/iris" in printed.stdout.splitlines()


def test_build_without_the_code_names_python_path_and_function(tmp_path: Path) -> None:
    shutil.copy(IRIS / "mlcomponent.yaml", tmp_path / "mlcomponent.yaml")
    line = one_line(run_cli("build", str(tmp_path / "mlcomponent.yaml"), "--print"))
    assert line.startswith("build: spec.mlService.inference.entryPoint: neither iris/ nor iris.py is in"), line
    assert "pythonFunction 'iris.predict.inference'" in line


# --------------------------------------------------------------------------- build, push: the engines


@pytest.mark.parametrize(("engine", "expected"), [
    ("podman", ["podman", "build", "--file", "/t/Containerfile", "--tag", "reg/x:1", "--layers",
                "--build-arg=INDEX_URL=http://i/simple", "--network", "host", "/m"]),
    ("buildah", ["buildah", "build", "--file", "/t/Containerfile", "--tag", "reg/x:1", "--layers",
                 "--build-arg=INDEX_URL=http://i/simple", "--network", "host", "/m"]),
    ("docker", ["docker", "build", "--file", "/t/Containerfile", "--tag", "reg/x:1",
                "--build-arg=INDEX_URL=http://i/simple", "--network", "host", "/m"]),
])
def test_build_command_lines(engine: str, expected: list[str]) -> None:
    assert build_command(engine, Path("/t/Containerfile"), "reg/x:1", Path("/m"), {"INDEX_URL": "http://i/simple"},
                         "host") == expected


def test_push_command_lines() -> None:
    assert push_command("podman", "reg:5000/x:1", tls_verify=False) == ["podman", "push", "--tls-verify=false",
                                                                         "reg:5000/x:1"]
    assert push_command("buildah", "reg/x:1") == ["buildah", "push", "reg/x:1"]
    assert push_command("docker", "reg/x:1", tls_verify=False) == ["docker", "push", "reg/x:1"]


def test_engines_are_tried_podman_first() -> None:
    assert find_engine(which=lambda name: f"/usr/bin/{name}") == "podman"
    assert find_engine(which=lambda name: "/usr/bin/docker" if name == "docker" else None) == "docker"
    assert find_engine(which=lambda name: None if name == "podman" else "/x") == "buildah"


def _no_engines(tmp_path: Path) -> dict[str, str]:
    """A PATH with python3 on it and no container engine."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir()
        (bin_dir / "python3").symlink_to(sys.executable)
    return {"PATH": str(bin_dir)}


def test_build_and_push_without_an_engine_name_all_three(module: Path, tmp_path: Path) -> None:
    for command in ("build", "push"):
        line = one_line(run_cli(command, str(module / "mlcomponent.yaml"), env=_no_engines(tmp_path)))
        assert line == (f"{command}: no container engine: none of podman, buildah, docker is on PATH; install one "
                        "(e.g. apt-get install podman)"), line


def _podman() -> str | None:
    from tests.images import ensure_podman

    if os.geteuid() != 0 or not shutil.which("apt-get") and not shutil.which("podman"):
        return None
    ensure_podman()
    return shutil.which("podman")


def test_build_with_podman_then_push_to_a_refusing_registry_is_one_line(module: Path) -> None:
    from tests.images import BASE_IMAGE, podman, podman_env
    from tests.support import not_run

    if _podman() is None:
        not_run("podman needs root or apt-get here")
    tag = f"localhost/mlcomponent-test-build:{os.getpid()}"
    env = {**podman_env(), "PATH": os.environ["PATH"]}
    refused = f"127.0.0.1:{free_port()}/mlcomponent-test-build:1"  # nothing listens there
    try:
        built = run_cli("build", str(module / "mlcomponent.yaml"), "--from", BASE_IMAGE, "--tag", tag,
                        "--network", "none", env=env, timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]
        assert built.stdout.strip().startswith(f"built {tag} (with podman)"), built.stdout
        probe = podman("run", "--rm", "--network", "none", tag, "python3", "-c",
                       "import os, scorer.predict; print(os.getuid(), os.getcwd(), "
                       "os.access('/home/app/users/tmp', os.W_OK))")
        assert probe.stdout.split() == ["1000", "/home/app", "True"], probe.stderr
        assert podman("tag", tag, refused).returncode == 0
        line = one_line(run_cli("push", str(module / "mlcomponent.yaml"), "--tag", refused, "--no-tls-verify",
                                env=env, timeout=120))
        assert line.startswith(f"push of {refused} failed (podman exited with 125): "), line
        assert "connection refused" in line, line
    finally:
        podman("rmi", "-f", tag, refused)


# --------------------------------------------------------------------------- upload


def local_model(module: Path) -> Path:
    """The scorer's model in its local-folder box (the embedded default), at its modelPath."""
    return module / "data" / "boxes" / "scorer-data" / "users/developer/file_groups/models/model.json"


def test_upload_puts_the_model_at_model_path_in_s3_and_checks_its_etag(module: Path, s3: S3Endpoint) -> None:
    manifest = module / "mlcomponent.yaml"
    box = "scorer-data"
    boxes = s3.boxes_file(module, box)
    model = module / "model.json"
    model.write_text('{"weights": [1, 2, 3], "bias": 0}\n')
    done = run_cli("upload", str(manifest), str(model), "--boxes", str(boxes), env=s3.server_env)
    assert done.returncode == 0, done.stderr
    key = "users/developer/file_groups/models/model.json"
    etag = hashlib.md5(model.read_bytes()).hexdigest()
    assert done.stdout.strip() == (f"uploaded {model} -> {box}/{key} ({model.stat().st_size} bytes, "
                                   f"ETag {etag} checked)")
    assert s3.client.get_object(Bucket=box, Key=key)["Body"].read() == model.read_bytes()


def test_a_large_model_goes_up_in_parts_and_its_multipart_etag_is_checked(module: Path, s3: S3Endpoint,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    (folder / "small.txt").write_text("vocabulary\n")
    boxes = s3.boxes_file(module, "scorer-data")
    done = run_cli("upload", str(module / "mlcomponent.yaml"), str(folder), "--boxes", str(boxes), env=s3.server_env)
    assert done.returncode == 0, done.stderr
    prefix = "users/developer/file_groups/models/model.json/weights"
    assert s3.keys("scorer-data", prefix) == [f"{prefix}/big.bin", f"{prefix}/small.txt"]
    etag = s3.client.head_object(Bucket="scorer-data", Key=f"{prefix}/big.bin")["ETag"].strip('"')
    assert etag.endswith("-2") and etag == expected_etag(folder / "big.bin"), etag
    assert f"ETag {etag} checked" in done.stdout


def test_upload_without_boxes_fills_the_local_folder_box_that_serve_reads(module: Path) -> None:
    model = module / "new-model.json"
    model.write_text('{"weights": [0.0, 0.0, 0.0], "bias": 0.9}\n')
    done = run_cli("upload", str(module / "mlcomponent.yaml"), str(model))
    assert done.returncode == 0, done.stderr
    assert local_model(module).read_bytes() == model.read_bytes()
    assert "sha256" in done.stdout


def test_upload_to_an_unreachable_box_is_one_line(module: Path, s3: S3Endpoint) -> None:
    boxes = boxes_file(module, f"http://127.0.0.1:{free_port()}", "scorer-data")
    line = one_line(run_cli("upload", str(module / "mlcomponent.yaml"), str(local_model(module)), "--boxes",
                            str(boxes), env=s3.server_env))
    assert line.startswith("upload: box 'scorer-data' (S3 bucket 'scorer-data'): cannot reach S3 at http://127.0.0.1:")
    assert line.endswith("check the endpoint in --boxes (or the operator configuration's s3Endpoint) "
                         "and that the box's S3 is up")


def test_upload_with_wrong_credentials_is_one_line(module: Path, tmp_path: Path) -> None:
    """moto with authentication on (INITIAL_NO_AUTH_ACTION_COUNT=0): an unknown key is refused."""
    from tests.support import stop_group, wait_until_live

    port = free_port()
    log = tmp_path / "moto-auth.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **S3_ENV, "INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        wait_until_live(f"http://127.0.0.1:{port}", process, log, path="/moto-api/")
        boxes = boxes_file(module, f"http://127.0.0.1:{port}", "scorer-data")
        line = one_line(run_cli("upload", str(module / "mlcomponent.yaml"), str(local_model(module)), "--boxes",
                                str(boxes), env={"BOX_KEY": "AKIAWRONGWRONGWRONG1", "BOX_SECRET": "wrong"}))
    finally:
        stop_group(process)
    assert line.startswith("upload: box 'scorer-data' (S3 bucket 'scorer-data'): the credentials were refused ("), line
    assert line.endswith("check the access key and secret key (as user `developer` of that box)"), line


def test_upload_names_an_unset_credentials_variable(module: Path, s3: S3Endpoint) -> None:
    boxes = s3.boxes_file(module, "scorer-data")
    model = local_model(module)
    env = {k: v for k, v in os.environ.items() if k not in ("BOX_KEY", "BOX_SECRET")}
    result = subprocess.run([sys.executable, "-m", "mlcomponent", "upload", str(module / "mlcomponent.yaml"),
                             str(model), "--boxes", str(boxes)], capture_output=True, text=True, env=env, timeout=60)
    line = one_line(result)
    assert line == ("upload: box 'scorer-data': environment variable 'BOX_KEY' (named in --boxes) is not set; "
                    "export it with the box's credentials"), line


# --------------------------------------------------------------------------- the model's version in its metadata


def test_the_metadata_reports_the_model_content_the_pod_was_made_for(module: Path) -> None:
    with serve(module / "mlcomponent.yaml", env={"MLCOMPONENT_MODEL_VERSION": "0123abcd4567ef89"}) as server:
        metadata = HTTP.get(f"{server.url}/v2/models/scorer", timeout=10).json()
    assert metadata["parameters"]["model_version"] == "0123abcd4567ef89"


# --------------------------------------------------------------------------- status and deploy's view


def _pod(name: str, ready: bool, content: str, waiting: str | None = None) -> dict[str, Any]:
    statuses = [{"name": "inference", "state": {"waiting": {"reason": waiting}} if waiting else {"running": {}}}]
    return {"metadata": {"name": name, "annotations": {"unified-platform.cs.hse.ru/model-content": content}},
            "status": {"phase": "Running" if ready else "Pending", "containerStatuses": statuses,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _component(status: str, reason: str, message: str, generation: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": "scorer", "namespace": "lab", "generation": 2},
            "status": {"url": "http://scorer.lab.svc.cluster.local/v2/models/scorer", "modelContent": "new0",
                       "observedGeneration": generation,
                       "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": message,
                                       "observedGeneration": generation}]}}


def test_status_shows_the_condition_the_model_content_and_each_replica() -> None:
    component = _component("False", "RolloutInProgress", "1/2 replicas available, 1 updated")
    pods = [_pod("scorer-b", False, "new0", "PodInitializing"), _pod("scorer-a", True, "old0")]
    events = [{"type": "Normal", "reason": "Pulled", "message": "Successfully pulled image",
               "involvedObject": {"name": "scorer-b"}}]
    assert view(component, pods, events) == [
        "lab/scorer: Ready=False (RolloutInProgress)",
        "  1/2 replicas available, 1 updated",
        "  url: http://scorer.lab.svc.cluster.local/v2/models/scorer",
        "  model content: new0",
        "  pod scorer-a: ready; model old0",
        "  pod scorer-b: Pending, PodInitializing; model new0",
        "  event Normal scorer-b: Pulled: Successfully pulled image",
    ]
    assert summary(component, pods[:1]) == "Ready=False RolloutInProgress | scorer-b: Pending, PodInitializing; model new0"


def test_deploy_waits_for_its_own_generation_and_stops_on_a_failure_that_waiting_does_not_fix() -> None:
    assert outcome(_component("True", "DeploymentAvailable", "1/1", generation=1), 2) is None  # the old spec's
    assert outcome(_component("True", "DeploymentAvailable", "1/1"), 2) == (True, "1/1")
    assert outcome(_component("False", "RolloutInProgress", "0/1"), 2) is None
    failed = outcome(_component("False", "BoxSyncFailed", "pod x: init container sync-model-box exited with code 1"), 2)
    assert failed == (False, "BoxSyncFailed: pod x: init container sync-model-box exited with code 1")


def test_deploy_and_status_without_a_cluster_are_one_line(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "missing-kubeconfig")}
    line = one_line(run_cli("deploy", str(IRIS / "mlcomponent.yaml"), env=env))
    assert line.startswith("deploy: no cluster to deploy to: cannot load a kubeconfig"), line
    assert line.endswith("set KUBECONFIG or `kubectl config use-context`"), line
    kubeconfig = tmp_path / "kubeconfig"
    port = free_port()
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "gone", "user": {}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    for args in (["deploy", str(IRIS / "mlcomponent.yaml")], ["status", "iris-classifier"]):
        line = one_line(run_cli(*args, env={"KUBECONFIG": str(kubeconfig)}))
        assert line.startswith(f"{args[0]}: cannot reach the cluster at http://127.0.0.1:{port} ("), line
        assert line.endswith("check KUBECONFIG / the current context and that the cluster is up"), line


# --------------------------------------------------------------------------- render: the files Secret, the content hash


def test_render_shares_the_files_secret_and_a_model_content_rolls_the_pods() -> None:
    from mlcomponent.kubernetes.operator import content_hash
    from mlcomponent.kubernetes.render import OperatorConfig, render
    from mlcomponent.manifest import load_manifest

    manifest = load_manifest(IRIS / "mlcomponent.yaml")
    plain = next(o for o in render(manifest, OperatorConfig.load(None)) if o["kind"] == "Deployment")
    env = {e["name"]: e for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLCOMPONENT_FILES_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "iris-classifier-files", "key": "secret"}}
    assert "MLCOMPONENT_MODEL_VERSION" not in env
    assert "unified-platform.cs.hse.ru/model-content" not in plain["spec"]["template"]["metadata"]["annotations"]
    first = content_hash([("models/iris.joblib", "etag-1", 100)])
    assert first == content_hash([("models/iris.joblib", "etag-1", 100)])  # the same content, the same hash
    second = content_hash([("models/iris.joblib", "etag-2", 100)])
    assert len({first, second, content_hash([])}) == 3
    rolled = next(o for o in render(manifest, OperatorConfig.load(None), second) if o["kind"] == "Deployment")
    template = rolled["spec"]["template"]
    assert template["metadata"]["annotations"]["unified-platform.cs.hse.ru/model-content"] == second
    assert {"name": "MLCOMPONENT_MODEL_VERSION", "value": second} in template["spec"]["containers"][0]["env"]


# --------------------------------------------------------------------------- the docs


def test_kubernetes_docs_start_with_ship_a_module_whose_commands_exist() -> None:
    import re

    import click

    from mlcomponent.cli import main
    from tests.test_ship_node import doc_commands

    text = (ROOT / "docs" / "kubernetes.md").read_text()
    assert re.findall(r"^## .*$", text, re.M)[0] == "## Ship a module"
    assert isinstance(main, click.Group)
    used = [c[1] for c in doc_commands() if c[0] == "mlcomponent"]
    assert {"build", "push", "upload", "deploy", "status"} <= set(used) <= set(main.commands)
    assert "TIMES_TBD" not in text
