"""deploy, status and the operator's model poll against a real kube-apiserver (v1.20) and moto's S3.

No kubelet here: a Deployment becomes available when the test patches its status (as
tests/test_kubernetes_e2e.py does); tests/test_ship_node.py runs the real pods.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcomponent.kubernetes.operator import content_hash
from tests.conftest import S3_ENV, S3Endpoint
from tests.k8s import Cluster, control_plane, eventually, operator
from tests.support import ROOT, run_cli

pytestmark = pytest.mark.timeout(600)
NAMESPACE = "pu-ship"
NAME = "iris-ship"
BOX, PREFIX = "iris-data", "users/developer/file_groups/models"
KEY = f"{PREFIX}/iris.joblib"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with control_plane(tmp_path_factory.mktemp("k8s")) as running:
        yield running


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Path:
    folder = tmp_path_factory.mktemp("ship")
    data = yaml.safe_load((ROOT / "examples" / "iris" / "mlcomponent.yaml").read_text())
    data["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    (folder / "mlcomponent.yaml").write_text(yaml.safe_dump(data))
    data["metadata"]["name"] = "lab-registry"
    data["spec"]["mlService"]["packageRegistryName"] = "lab-registry"
    (folder / "unknown-registry.yaml").write_text(yaml.safe_dump(data))
    config = {"registries": {"python-package-registry": "https://packages.example.org/simple"},
              "s3Endpoint": s3.url, "s3Region": "us-east-1", "modelPollSeconds": 1}
    (folder / "operator.yaml").write_text(yaml.safe_dump(config))
    s3.bucket(BOX)
    return folder


def cli(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"KUBECONFIG": str(cluster.kubeconfig), **S3_ENV}, timeout=timeout)


def make_available(cluster: Cluster) -> None:
    from kubernetes import client

    deployment = eventually(lambda: cluster.get("deployment", NAME, NAMESPACE), what="the Deployment")
    status = {"status": {"observedGeneration": deployment["metadata"]["generation"], "replicas": 1,
                         "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                         "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                         "message": "ok", "lastUpdateTime": "2026-01-01T00:00:00Z",
                                         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    client.AppsV1Api(cluster.api()).patch_namespaced_deployment_status(NAME, NAMESPACE, status)


def template(cluster: Cluster) -> dict[str, Any]:
    deployment = cluster.get("deployment", NAME, NAMESPACE)
    assert deployment is not None
    return dict(deployment["spec"]["template"])


def test_deploy_before_the_crd_is_installed_names_mlcomponent_install(cluster: Cluster, work: Path) -> None:
    result = cli(cluster, "deploy", str(work / "mlcomponent.yaml"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == ("deploy: the cluster has no MLComponent type (CRD not installed); install the "
                                     "operator: mlcomponent install | kubectl apply -f -"), result.stderr


@pytest.fixture(scope="module")
def installed(cluster: Cluster, work: Path) -> Iterator[None]:
    crd = run_cli("crd")
    cluster.kubectl("apply", "-f", "-", input=crd.stdout)
    cluster.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                    "crd/mlcomponents.unified-platform.cs.hse.ru")
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("create", "secret", "generic", f"{BOX}-s3", "-n", NAMESPACE,
                    f"--from-literal=accessKey={S3_ENV['AWS_ACCESS_KEY_ID']}",
                    f"--from-literal=secretKey={S3_ENV['AWS_SECRET_ACCESS_KEY']}")
    with operator(cluster, work / "operator.log", "--config", str(work / "operator.yaml"), "--verbose"):
        yield


def test_upload_then_deploy_returns_when_ready_with_the_model_content_in_the_pods(
        cluster: Cluster, work: Path, s3: S3Endpoint, installed: None) -> None:
    model = work / "model-1.bin"
    model.write_bytes(b"the first model\n")
    uploaded = cli(cluster, "upload", str(work / "mlcomponent.yaml"), str(model), "--config", str(work / "operator.yaml"))
    assert uploaded.returncode == 0, uploaded.stderr
    assert f"-> {BOX}/{KEY} (16 bytes, ETag" in uploaded.stdout
    command = [sys.executable, "-m", "mlcomponent", "deploy", str(work / "mlcomponent.yaml"), "--timeout", "120"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**S3_ENV, "KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"}) as deploy:
        make_available(cluster)
        out, err = deploy.communicate(timeout=120)
    assert deploy.returncode == 0, err
    assert out.strip() == (f"{NAMESPACE}/{NAME} is Ready (1/1 replicas available): "
                           f"http://{NAME}.{NAMESPACE}.svc.cluster.local/v2/models/{NAME}"), out
    assert f"applied MLComponent {NAMESPACE}/{NAME} (generation 1)" in err
    assert "Ready=True DeploymentAvailable" in err, err  # the live status line
    etag = s3.client.head_object(Bucket=BOX, Key=KEY)["ETag"].strip('"')
    expected = content_hash([(KEY, etag, 16)])
    pod = template(cluster)
    assert pod["metadata"]["annotations"]["unified-platform.cs.hse.ru/model-content"] == expected
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["MLCOMPONENT_MODEL_VERSION"]["value"] == expected
    assert env["MLCOMPONENT_FILES_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": f"{NAME}-files", "key": "secret"}


def test_the_files_secret_is_random_owned_and_kept(cluster: Cluster, installed: None) -> None:
    secret = eventually(lambda: cluster.get("secret", f"{NAME}-files", NAMESPACE), what="the files Secret")
    owners = [(o["kind"], o["name"]) for o in secret["metadata"]["ownerReferences"]]
    assert owners == [("MLComponent", NAME)]
    assert len(secret["data"]["secret"]) >= 40
    cluster.kubectl("patch", "mlc", NAME, "-n", NAMESPACE, "--type", "merge", "-p",
                    '{"spec": {"env": [{"name": "IRIS_UNSURE_LABEL", "value": "doubtful"}]}}')
    eventually(lambda: any(e.get("value") == "doubtful" for e in template(cluster)["spec"]["containers"][0]["env"]),
               what="the Deployment updated")
    again = cluster.get("secret", f"{NAME}-files", NAMESPACE)
    assert again is not None and again["data"] == secret["data"] and again["metadata"]["uid"] == secret["metadata"]["uid"]


def test_a_new_model_in_the_box_rolls_the_deployment_within_the_poll_period(
        cluster: Cluster, work: Path, s3: S3Endpoint, installed: None) -> None:
    before = template(cluster)["metadata"]["annotations"]["unified-platform.cs.hse.ru/model-content"]
    model = work / "model-2.bin"
    model.write_bytes(b"the second, better model\n")
    uploaded = cli(cluster, "upload", str(work / "mlcomponent.yaml"), str(model), "--config", str(work / "operator.yaml"))
    assert uploaded.returncode == 0, uploaded.stderr
    etag = s3.client.head_object(Bucket=BOX, Key=KEY)["ETag"].strip('"')
    expected = content_hash([(KEY, etag, model.stat().st_size)])
    assert expected != before
    eventually(lambda: template(cluster)["metadata"]["annotations"].get(
        "unified-platform.cs.hse.ru/model-content") == expected, timeout=30, what="the new content hash in the pods",
        explain=lambda: (work / "operator.log").read_text()[-3000:])
    component = cluster.get("mlc", NAME, NAMESPACE) or {}
    eventually(lambda: (cluster.get("mlc", NAME, NAMESPACE) or {}).get("status", {}).get("modelContent") == expected,
               timeout=30, what="status.modelContent", explain=lambda: str(component.get("status")))
    shown = cli(cluster, "status", NAME, "-n", NAMESPACE)
    assert shown.returncode == 0, shown.stderr
    assert f"  model content: {expected}" in shown.stdout.splitlines(), shown.stdout
    assert shown.stdout.startswith(f"{NAMESPACE}/{NAME}: Ready="), shown.stdout


def test_an_unchanged_box_does_not_roll_the_deployment(cluster: Cluster, work: Path, installed: None) -> None:
    generation = (cluster.get("deployment", NAME, NAMESPACE) or {})["metadata"]["generation"]
    log = work / "operator.log"

    def polls() -> int:
        return log.read_text(errors="replace").count("polled the model boxes of ")

    seen = polls()
    eventually(lambda: polls() >= seen + 3, timeout=60, what="three more polls of the model box")
    assert (cluster.get("deployment", NAME, NAMESPACE) or {})["metadata"]["generation"] == generation


def test_a_component_has_no_finalizer_so_deleting_it_never_waits_for_the_operator(
        cluster: Cluster, installed: None) -> None:
    assert not (cluster.get("mlc", NAME, NAMESPACE) or {})["metadata"].get("finalizers")


def test_deploy_of_a_refused_component_exits_with_the_condition(cluster: Cluster, work: Path, installed: None) -> None:
    result = cli(cluster, "deploy", str(work / "unknown-registry.yaml"), "--timeout", "60")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"deploy: {NAMESPACE}/lab-registry failed: UnknownPackageRegistry: "
                           "spec.mlService.packageRegistryName: 'lab-registry' is not in the operator's `registries`"), last


def test_status_of_a_component_that_is_not_there_is_one_line(cluster: Cluster, installed: None) -> None:
    result = cli(cluster, "status", "no-such", "-n", NAMESPACE)
    assert result.returncode == 1 and result.stderr.strip() == (
        f"status: no MLComponent 'no-such' in namespace '{NAMESPACE}'; check the name, or pass -n NAMESPACE")
