"""The CRD and the operator against a real kube-apiserver (v1.20, from ../shared/tools/k8s)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcomponent.kubernetes.render import OperatorConfig, render
from mlcomponent.manifest import load_manifest
from tests.k8s import Cluster, control_plane, eventually, is_subset, operator
from tests.support import SEED_MANIFEST, run_cli

pytestmark = pytest.mark.timeout(600)
NAMESPACE = "pu-username-pa-bm99"
NAME = "somename-mlcmp"
GROUP, VERSION, PLURAL = "unified-platform.cs.hse.ru", "v1", "mlcomponents"
CONFIG = OperatorConfig(registries={"python-package-registry": "https://packages.example.org/simple"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with control_plane(tmp_path_factory.mktemp("k8s")) as running:
        crd = run_cli("crd")
        assert crd.returncode == 0, crd.stderr
        running.kubectl("apply", "-f", "-", input=crd.stdout)
        running.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                        f"crd/{PLURAL}.{GROUP}")
        running.kubectl("create", "namespace", NAMESPACE)
        yield running


class Operator:
    """The operator in a subprocess, which a test may kill and start again."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.runs = 0
        self.stack = ExitStack()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        config = self.cluster.folder / "operator.yaml"
        config.write_text(yaml.safe_dump(CONFIG.model_dump(by_alias=True, mode="json")))
        self.process = self.stack.enter_context(operator(self.cluster, self.cluster.folder / f"operator-{self.runs}.log",
                                                         "--config", str(config)))

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="module")
def running_operator(cluster: Cluster) -> Iterator[Operator]:
    handle = Operator(cluster)
    handle.start()
    with handle.stack:
        yield handle


def get(cluster: Cluster, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "yaml", check=False)
    return yaml.safe_load(result.stdout) if result.returncode == 0 else None


def mlc(cluster: Cluster, name: str = NAME) -> dict[str, Any]:
    found = get(cluster, "mlcomponent", name)
    assert found is not None
    return found


def ready(cluster: Cluster, name: str = NAME) -> dict[str, Any] | None:
    conditions = (mlc(cluster, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def test_crd_registers_with_short_name_and_printer_columns(cluster: Cluster) -> None:
    crd = yaml.safe_load(cluster.kubectl("get", "crd", f"{PLURAL}.{GROUP}", "-o", "yaml").stdout)
    assert crd["spec"]["names"]["shortNames"] == ["mlc"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert {"Ready", "URL", "Age"} <= set(columns)


def test_the_operator_creates_exactly_the_rendered_objects(cluster: Cluster, running_operator: Operator) -> None:
    cluster.kubectl("apply", "-f", str(SEED_MANIFEST))
    expected = render(load_manifest(SEED_MANIFEST), CONFIG)
    for obj in expected:
        kind, name = obj["kind"].lower(), obj["metadata"]["name"]
        live = eventually(lambda kind=kind, name=name: get(cluster, kind, name), what=f"{kind} {name}")
        is_subset(obj, live)
        owners = live["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o.get("controller")) for o in owners] == [("MLComponent", NAME, True)]
    status = eventually(lambda: mlc(cluster).get("status", {}).get("url") and mlc(cluster)["status"],
                        what="status.url")
    assert status["url"] == f"http://{NAME}.{NAMESPACE}.svc.cluster.local/v2/models/{NAME}"
    assert status["observedGeneration"] == mlc(cluster)["metadata"]["generation"]
    condition = ready(cluster)
    assert condition is not None and condition["status"] == "False"
    columns = cluster.kubectl("get", "mlc", "-n", NAMESPACE).stdout
    assert "READY" in columns and "URL" in columns and NAME in columns


def test_an_update_of_env_and_limits_rolls_the_deployment(cluster: Cluster, running_operator: Operator) -> None:
    eventually(lambda: get(cluster, "deployment", NAME), what="deployment")
    patch = ('{"spec": {"env": [{"name": "CUSTOM_PARAMETER_1", "value": "2.71"}], '
             '"image": {"existingImageName": "example.com/lab/new:2", "resourceLimits": {"cpu": "2", "memory": "1Gi"}}}}')
    cluster.kubectl("patch", "mlc", NAME, "-n", NAMESPACE, "--type", "merge", "-p", patch)

    def rolled() -> dict[str, Any] | None:
        container = get(cluster, "deployment", NAME)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if container["image"] == "example.com/lab/new:2" and env.get("CUSTOM_PARAMETER_1") == "2.71":
            return container
        return None

    container = eventually(rolled, what="deployment updated")
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert "ANOTHER_PARAMETER" not in {e["name"] for e in container["env"]}  # removed from the CR: removed here


def test_deployment_availability_turns_the_component_ready(cluster: Cluster, running_operator: Operator) -> None:
    deployment = eventually(lambda: get(cluster, "deployment", NAME), what="deployment")
    status = {"status": {"observedGeneration": deployment["metadata"]["generation"], "replicas": 1,
                         "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                         "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                         "message": "ok", "lastUpdateTime": "2026-01-01T00:00:00Z",
                                         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    api = cluster.api()
    from kubernetes import client

    client.AppsV1Api(api).patch_namespaced_deployment_status(NAME, NAMESPACE, status)
    condition = eventually(lambda: (c := ready(cluster)) and c["status"] == "True" and c, what="Ready=True")
    assert condition["reason"] == "DeploymentAvailable"


def test_schema_rejects_what_it_can_express(cluster: Cluster) -> None:
    bad = SEED_MANIFEST.read_text().replace("cpu: 500m", "cpu: half-a-core").replace(NAME, "schema-bad")
    result = cluster.kubectl("apply", "-f", "-", input=bad, check=False)
    assert result.returncode != 0 and "spec.image.resourceLimits.cpu" in result.stderr


def test_an_invalid_component_gets_the_validate_message_in_status_and_an_event(
        cluster: Cluster, running_operator: Operator, tmp_path: Path) -> None:
    text = SEED_MANIFEST.read_text().replace("fileBox: user-box", "fileBox: no-such-box").replace(NAME, "dangling")
    manifest = tmp_path / "dangling.yaml"
    manifest.write_text(text)
    validated = run_cli("validate", str(manifest))
    assert validated.returncode == 1
    expected = validated.stderr.splitlines()[0].split(": ", 1)[1]  # drop "file:line: "
    cluster.kubectl("apply", "-f", str(manifest))
    condition = eventually(lambda: ready(cluster, "dangling"), what="status of the invalid component")
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert condition["message"] == expected
    events = eventually(lambda: [e for e in yaml.safe_load(cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "-o", "yaml").stdout)["items"]
        if e["involvedObject"]["name"] == "dangling" and e["reason"] == "InvalidSpec"], what="event")
    assert expected in events[0]["message"]
    assert get(cluster, "deployment", "dangling") is None


def test_operator_restart_converges_without_duplicates(cluster: Cluster, running_operator: Operator) -> None:
    eventually(lambda: get(cluster, "deployment", NAME), what="deployment")
    cluster.kubectl("patch", "mlc", NAME, "-n", NAMESPACE, "--type", "merge",
                    "-p", '{"spec": {"env": [{"name": "AFTER_RESTART", "value": "1"}]}}')
    running_operator.kill()  # mid-way: the patch may or may not have been handled
    running_operator.start()

    def converged() -> bool:
        container = get(cluster, "deployment", NAME)["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
        return any(e["name"] == "AFTER_RESTART" for e in container["env"])

    eventually(converged, what="converged after restart")
    listed = yaml.safe_load(cluster.kubectl("get", "deployments,services,configmaps", "-n", NAMESPACE,
                                            "-l", f"app.kubernetes.io/instance={NAME}", "-o", "yaml").stdout)
    assert sorted(item["kind"] for item in listed["items"]) == ["ConfigMap", "Deployment", "Service"]
    owners = mlc(cluster)["metadata"].get("finalizers") or []
    assert owners == []  # no delete handler: deletion is left to garbage collection


def test_deleting_the_component_removes_its_objects(cluster: Cluster, running_operator: Operator) -> None:
    eventually(lambda: get(cluster, "service", NAME), what="service")
    cluster.kubectl("delete", "mlc", NAME, "-n", NAMESPACE, "--wait=true", "--timeout=60s")
    for kind, name in (("deployment", NAME), ("service", NAME), ("configmap", f"{NAME}-manifest")):
        eventually(lambda kind=kind, name=name: get(cluster, kind, name) is None, timeout=120,
                   what=f"{kind} {name} collected")


def test_the_api_server_rejects_every_expressible_invalid_variant(cluster: Cluster) -> None:
    from tests.test_kubernetes_render import EXPRESSIBLE, variant

    for name, (path, value) in sorted(EXPRESSIBLE.items()):
        data = variant(path, value)
        data["metadata"]["name"] = f"variant-{name}"
        result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(data), check=False)
        assert result.returncode != 0, f"the API server accepted the invalid variant {name!r}"
    accepted = cluster.kubectl("apply", "--dry-run=server", "-f", str(SEED_MANIFEST), check=False)
    assert accepted.returncode == 0, accepted.stderr


def test_deploy_folder_applies_to_the_real_api_server(cluster: Cluster) -> None:
    result = cluster.kubectl("apply", "-f", str(Path(__file__).resolve().parent.parent / "deploy"), check=False)
    assert result.returncode == 0, result.stderr
    role = yaml.safe_load(cluster.kubectl("get", "clusterrole", "mlcomponent-operator", "-o", "yaml").stdout)
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    assert get(cluster, "deployment", "mlcomponent-operator", "mlcomponent-system") is not None
