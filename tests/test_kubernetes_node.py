"""The pod really runs: the operator's Deployments on a real kubelet (../shared/tools/k8s/node.sh).

The platform as the spec describes it, built here: the library's wheel from this checkout
published with its dependencies in a package index served on the node's address; the
iris example's image built FROM the Debian base with its own dependencies and without
mlcomponent (python3, no `python`); the model and the user files in S3 (moto) reached from
the pods; box credentials in Secrets named as the operator's `boxSecret` says.

The operator runs in the cluster from its own image (built from the repository's
Containerfile, installed from `mlcomponent install` output); MLCOMPONENT_E2E_OPERATOR=process
runs it as a process instead (no image to rebuild while you work on it). It turns the
example's seed-shaped manifests into pods that install, sync, warm up, serve, roll, drain
and fail visibly. On a failure, test-artifacts/<test>/ gets the objects, events,
`kubectl describe` and every container's logs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlcomponent import __version__
from tests import images, registry
from tests.conftest import S3_ENV, S3Endpoint
from tests.k8s import (
    NODE_IP,
    Cluster,
    collect_artifacts,
    eventually,
    kubectl_proxy,
    machine_lock,
    moto_on,
    node_cluster,
    node_prerequisites,
    operator,
)
from tests.support import HTTP, ROOT, not_run, run_cli

pytestmark = pytest.mark.timeout(900)
NAMESPACE = "pu-e2e-iris"
IRIS = ROOT / "examples" / "iris"
MODEL_BOX, MODEL_KEY = "iris-data", "users/developer/file_groups/models/iris.joblib"
MODEL_PATH = "/home/app/models/iris.joblib"
MODULE_PACKAGES = ("scikit-learn", "joblib", "numpy")  # pinned to this environment's versions: the model's pickle
OPERATOR_NAMESPACE = "mlcomponent-system"
IN_CLUSTER = os.environ.get("MLCOMPONENT_E2E_OPERATOR", "cluster") != "process"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]  # a setosa and a virginica


@dataclass
class Platform:
    cluster: Cluster
    work: Path
    index_url: str
    s3: S3Endpoint
    module_image: str
    operator_image: str | None
    no_python_image: str
    logs: list[Path] = field(default_factory=list)

    def operator_config(self) -> dict[str, Any]:
        return {"registries": {"python-package-registry": self.index_url}, "s3Endpoint": self.s3.url,
                "s3Region": "us-east-1", "boxSecret": "{box}-s3"}


# --------------------------------------------------------------------------- the platform


def _images(work: Path) -> tuple[str | None, str, str, Path]:
    """Wheel, dependency wheels, package index; the operator's (when it runs in the cluster) and the module's images."""
    images.ensure_podman()
    wheel = registry.build_wheel(work / "dist")
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MODULE_PACKAGES]
    dependencies = registry.gather_wheels(registry.dependency_requirements(("kubernetes",)) + pins)
    wheels = [wheel, *(w for w in dependencies.glob("*.whl") if not w.name.startswith("mlcomponent-"))]
    tree = registry.publish(work / "index", wheels)
    base = {"BASE_IMAGE": images.BASE_IMAGE}
    operator_image = None
    with registry.serve(tree, "127.0.0.1", work / "index-build.log") as build_index:  # podman build --network host
        if IN_CLUSTER:
            operator_image = images.build(
                "localhost/mlcomponent-operator", f"{__version__}-{images.digest(wheel, ROOT / 'Containerfile')}",
                ROOT, ROOT / "Containerfile", {**base, "INDEX_URL": build_index, "VERSION": __version__}, network="host")
        module_image = images.build(
            "localhost/mlcomponent-e2e-iris", images.digest(IRIS / "iris", IRIS / "Containerfile", " ".join(pins)),
            IRIS, IRIS / "Containerfile", {**base, "INDEX_URL": build_index}, network="host")
    return operator_image, module_image, images.no_python_image(work), tree



def _boxes(platform: Platform) -> None:
    """The model under the mountS3Box's subPath, the user box, and a Secret per box."""
    trained = subprocess.run([sys.executable, str(IRIS / "train.py"), "--data-root", str(platform.work / "train")],
                             capture_output=True, text=True, timeout=120)
    assert trained.returncode == 0, trained.stderr
    model = platform.work / "train" / "boxes" / MODEL_BOX / MODEL_KEY
    platform.s3.client.upload_file(str(model), platform.s3.bucket(MODEL_BOX), MODEL_KEY)
    platform.s3.bucket("users")
    platform.cluster.kubectl("create", "namespace", NAMESPACE)
    for box in (MODEL_BOX, "users"):
        platform.cluster.kubectl("create", "secret", "generic", f"{box}-s3", "-n", NAMESPACE,
                                 f"--from-literal=accessKey={S3_ENV['AWS_ACCESS_KEY_ID']}",
                                 f"--from-literal=secretKey={S3_ENV['AWS_SECRET_ACCESS_KEY']}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    reason = node_prerequisites()
    if reason:
        not_run(reason)
    work = tmp_path_factory.mktemp("node")
    with ExitStack() as stack:
        stack.enter_context(machine_lock("mlcomponent-e2e-node"))  # another checkout's run waits its turn
        started = time.monotonic()
        operator_image, module_image, no_python, tree = _images(work)
        built = time.monotonic()
        node_images = [module_image, no_python, *([operator_image] if operator_image else [])]
        cluster = stack.enter_context(node_cluster(work / "k8s", node_images))
        index_url = stack.enter_context(registry.serve(tree, NODE_IP, work / "index.log"))
        s3 = stack.enter_context(moto_on(NODE_IP, work / "moto.log"))
        platform = Platform(cluster, work, index_url, s3, module_image, operator_image, no_python,
                            logs=[work / "index.log", work / "moto.log"])
        _boxes(platform)
        crd = run_cli("crd")
        assert crd.returncode == 0, crd.stderr
        cluster.kubectl("apply", "-f", "-", input=crd.stdout)
        cluster.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                        "crd/mlcomponents.unified-platform.cs.hse.ru")
        print(f"\nplatform: images {built - started:.1f}s, node and boxes {time.monotonic() - built:.1f}s")
        yield platform


@pytest.fixture(autouse=True)
def artifacts_on_failure(request: pytest.FixtureRequest, platform: Platform) -> Iterator[None]:
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        collect_artifacts(platform.cluster, ROOT / "test-artifacts" / request.node.name,
                          [NAMESPACE, OPERATOR_NAMESPACE], platform.logs)


# --------------------------------------------------------------------------- helpers


def manifest(platform: Platform, source: Path, name: str | None = None, image: str | None = None,
             cpu: str = "500m", **changes: Any) -> dict[str, Any]:
    """An example's seed-shaped manifest, in the test namespace, with the module image built here.

    The node has two cores, and each pod asks for its cpu limit (Guaranteed QoS): the
    components that serve get half a core, those that cannot start a tenth.
    """
    data: dict[str, Any] = yaml.safe_load(source.read_text())
    data["metadata"] = {"name": name or data["metadata"]["name"], "namespace": NAMESPACE}
    data["spec"]["image"] = {"existingImageName": image or platform.module_image,
                             "resourceLimits": {"cpu": cpu, "memory": "512M"}}
    ml_service = data["spec"]["mlService"]
    if "registry" in changes:
        ml_service["packageRegistryName"] = changes["registry"]
    if "function" in changes:
        ml_service["inference"]["entryPoint"]["pythonFunction"] = changes["function"]
    return data


def apply(platform: Platform, data: dict[str, Any]) -> None:
    platform.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(data))


def ready_condition(cluster: Cluster, name: str) -> dict[str, Any]:
    component = cluster.get("mlc", name, NAMESPACE) or {}
    conditions = (component.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def wait_for_condition(cluster: Cluster, name: str, status: str, reason: str | None = None,
                       timeout: float = 240) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        condition = ready_condition(cluster, name)
        if condition.get("status") == status and reason in (None, condition.get("reason")):
            return condition
        return None

    return eventually(reached, timeout=timeout, what=f"MLComponent {name} Ready={status}" + (f" ({reason})" if reason else ""),
                      explain=lambda: f"its Ready condition: {json.dumps(ready_condition(cluster, name), indent=1)}")


def pods(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    listed = cluster.items("pods", NAMESPACE, f"app.kubernetes.io/instance={name}")
    return [p for p in listed if not p["metadata"].get("deletionTimestamp")]


def all_pods(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return cluster.items("pods", NAMESPACE, f"app.kubernetes.io/instance={name}")


def finished(cluster: Cluster, name: str) -> bool:
    """The pod is gone, or its server has exited (the kubelet removes the object some seconds later)."""
    pod = cluster.get("pod", name, NAMESPACE)
    if pod is None:
        return True
    statuses = pod["status"].get("containerStatuses") or []
    return bool(statuses) and all("terminated" in s["state"] for s in statuses)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def infer_body(parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [len(ROWS), 4],
                                        "data": [v for row in ROWS for v in row]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def labels(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return list(next(o for o in response.json()["outputs"] if o["name"] == "label")["data"])


def service_url(cluster: Cluster, name: str) -> str:
    service = cluster.get("service", name, NAMESPACE)
    assert service is not None, f"no Service {name}"
    return f"http://{service['spec']['clusterIP']}:80"


class RequestLoop:
    """Requests, one new connection each (so each is routed afresh), bounded in count and time."""

    def __init__(self, url: str, body: dict[str, Any], max_requests: int = 20000, max_seconds: float = 240,
                 pause: float = 0.05) -> None:
        self.url, self.body = url, body
        self.max_requests, self.max_seconds, self.pause = max_requests, max_seconds, pause
        self.answers: list[tuple[float, str]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set() and len(self.answers) + len(self.failures) < self.max_requests:
            now = time.monotonic() - started
            if now > self.max_seconds:
                return
            try:
                response = HTTP.post(self.url, json=self.body, timeout=10, headers={"Connection": "close"})
                if response.status_code == 200:
                    self.answers.append((now, labels(response)[0]))
                else:
                    self.failures.append((now, f"HTTP {response.status_code}: {response.text[:200]}"))
            except httpx.HTTPError as error:
                self.failures.append((now, f"{type(error).__name__}: {error}"))
            self._stop.wait(self.pause)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        eventually(lambda: len(self.answers) >= 10, timeout=30, what="the request loop's first answers",
                   explain=lambda: f"failures: {self.failures[:5]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def seen(self) -> list[str]:
        """The distinct answers in the order they first came."""
        return list(dict.fromkeys(label for _, label in self.answers))


def timeline(pod: dict[str, Any]) -> str:
    """When each step of a pod's start happened, in seconds after it was created (printed with -n 0 -s)."""
    import datetime

    def at(stamp: str) -> float:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    created = at(pod["metadata"]["creationTimestamp"])
    steps = []
    for status in [*pod["status"].get("initContainerStatuses", []), *pod["status"].get("containerStatuses", [])]:
        state = status["state"].get("terminated") or status["state"].get("running") or {}
        if "startedAt" in state:
            steps.append(f"{status['name']} {at(state['startedAt']) - created:.0f}s")
        if "finishedAt" in state:
            steps.append(f"→{at(state['finishedAt']) - created:.0f}s")
    ready = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
    return f"{pod['metadata']['name']}: {' '.join(steps)}, Ready {at(ready) - created:.0f}s"


def container_statuses(pod: dict[str, Any], init: bool) -> dict[str, dict[str, Any]]:
    key = "initContainerStatuses" if init else "containerStatuses"
    return {s["name"]: s for s in pod["status"].get(key) or []}




# --------------------------------------------------------------------------- the operator and the components

CLASSIFIER, TABLE = "iris-classifier", "iris-table"
BROKEN = ("import-fails", "no-python", "unknown-registry")


@contextmanager
def installed_operator(platform: Platform) -> Iterator[None]:
    """The operator as `mlcomponent install` prints it, running the image built from the Containerfile.

    The test cluster mounts no ServiceAccount tokens and its API server listens on loopback
    only: the operator gets a kubeconfig to a `kubectl proxy` on the node's address, as a
    Secret. Everything else is applied as `install` printed it.
    """
    assert platform.operator_image is not None
    cluster = platform.cluster
    config = platform.work / "install-config.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in platform.operator_config().items() if k != "registries"}))
    printed = run_cli("install", "--render", "--image", platform.operator_image, "--index-url", platform.index_url,
                      "--config", str(config))
    assert printed.returncode == 0, printed.stderr
    documents = list(yaml.safe_load_all(printed.stdout))
    with kubectl_proxy(cluster, NODE_IP, platform.work / "proxy.log") as proxy:
        kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "proxy",
                      "clusters": [{"name": "proxy", "cluster": {"server": proxy}}],
                      "users": [{"name": "proxy", "user": {}}],
                      "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}]}
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
        cluster.kubectl("create", "secret", "generic", "operator-kubeconfig", "-n", OPERATOR_NAMESPACE,
                        f"--from-literal=config={yaml.safe_dump(kubeconfig)}")
        pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        pod["volumes"].append({"name": "kubeconfig", "secret": {"secretName": "operator-kubeconfig"}})
        container = pod["containers"][0]
        container["env"].append({"name": "KUBECONFIG", "value": "/etc/kubeconfig/config"})
        container["volumeMounts"].append({"name": "kubeconfig", "mountPath": "/etc/kubeconfig", "readOnly": True})
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
        cluster.kubectl("rollout", "status", "deployment/mlcomponent-operator", "-n", OPERATOR_NAMESPACE,
                        "--timeout=120s")
        yield


@pytest.fixture(scope="module")
def running_operator(platform: Platform) -> Iterator[None]:
    if IN_CLUSTER:
        with installed_operator(platform):
            yield
        return
    config = platform.work / "operator.yaml"
    config.write_text(yaml.safe_dump(platform.operator_config()))
    log = platform.work / "operator-process.log"
    platform.logs.append(log)
    with operator(platform.cluster, log, "--config", str(config)):
        yield


@pytest.fixture(scope="module")
def components(platform: Platform, running_operator: None) -> None:
    """Everything applied at once, so the pods start side by side: the classifier (two replicas,
    as an autoscaler would set them), the table (FILE in and out), and three that cannot run."""
    apply(platform, manifest(platform, IRIS / "mlcomponent.yaml", CLASSIFIER))
    apply(platform, manifest(platform, IRIS / "table.yaml", TABLE))
    apply(platform, manifest(platform, IRIS / "mlcomponent.yaml", "import-fails", cpu="100m",
                             function="iris.no_such_module.inference"))
    apply(platform, manifest(platform, IRIS / "mlcomponent.yaml", "no-python", cpu="100m",
                             image=platform.no_python_image))
    apply(platform, manifest(platform, IRIS / "mlcomponent.yaml", "unknown-registry", cpu="100m",
                             registry="lab-registry"))
    cluster = platform.cluster
    eventually(lambda: cluster.get("deployment", CLASSIFIER, NAMESPACE), what=f"Deployment {CLASSIFIER}",
               explain=lambda: json.dumps(ready_condition(cluster, CLASSIFIER)))
    cluster.kubectl("scale", "deployment", CLASSIFIER, "-n", NAMESPACE, "--replicas", "2")


# --------------------------------------------------------------------------- running, serving


def test_the_component_becomes_ready_because_its_pods_are(platform: Platform, components: None) -> None:
    cluster = platform.cluster
    condition = wait_for_condition(cluster, CLASSIFIER, "True")
    assert condition["reason"] == "DeploymentAvailable" and condition["message"] == "2/2 replicas available", condition
    running = pods(cluster, CLASSIFIER)
    assert len(running) == 2 and all(p["status"]["phase"] == "Running" and pod_ready(p) for p in running), \
        "the component is Ready but its pods are not"
    for pod in running:
        inits = container_statuses(pod, init=True)
        exits = {name: s["state"].get("terminated", {}).get("exitCode") for name, s in inits.items()}
        assert exits == {"install-mlcomponent": 0, "sync-model-box": 0}, f"init containers of {pod['metadata']['name']}"
        image = container_statuses(pod, init=False)["inference"]["image"]
        assert image.endswith(platform.module_image.split("/", 1)[1]), image
        print(timeline(pod))


def test_the_image_has_no_mlcomponent_and_no_python_only_python3(platform: Platform, components: None) -> None:
    pod = pods(platform.cluster, CLASSIFIER)[0]["metadata"]["name"]
    probe = ("import importlib.util, shutil; print(shutil.which('python'), "
             "importlib.util.find_spec('mlcomponent', None) is None)")
    # the image as built: without the PYTHONPATH the pod adds for the installed package
    answer = platform.cluster.kubectl("exec", pod, "-n", NAMESPACE, "-c", "inference", "--", "python3", "-I", "-c",
                                      probe).stdout.split()
    assert answer == ["None", "True"], f"`python` on PATH, mlcomponent missing from the image: {answer}"


def test_the_sync_init_container_put_the_model_at_model_path(platform: Platform, components: None) -> None:
    uploaded = platform.s3.client.head_object(Bucket=MODEL_BOX, Key=MODEL_KEY)["ContentLength"]
    for pod in pods(platform.cluster, CLASSIFIER):
        size = platform.cluster.kubectl("exec", pod["metadata"]["name"], "-n", NAMESPACE, "-c", "inference", "--",
                                        "python3", "-c", "import os, sys; print(os.path.getsize(sys.argv[1]))",
                                        MODEL_PATH).stdout.strip()
        assert int(size) == uploaded, f"{MODEL_PATH} in the pod has {size} bytes, the model box {uploaded}"


def test_readiness_comes_only_after_the_warm_up(platform: Platform, components: None) -> None:
    for pod in pods(platform.cluster, CLASSIFIER):
        logs = platform.cluster.kubectl("logs", pod["metadata"]["name"], "-n", NAMESPACE, "-c", "inference").stdout
        records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        warmed = [r["time"] for r in records if "warm-up succeeded" in r["message"]]
        assert warmed, f"no warm-up in the server's log:\n{logs}"
        became_ready = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert became_ready >= warmed[0][:19] + "Z", \
            f"the pod became Ready at {became_ready}, before the warm-up ({warmed[0]})"


def test_the_operator_that_did_it_is_the_installed_one(platform: Platform, components: None) -> None:
    if not IN_CLUSTER:
        pytest.skip("MLCOMPONENT_E2E_OPERATOR=process: the operator ran as a process")
    cluster = platform.cluster
    [pod] = cluster.items("pods", OPERATOR_NAMESPACE, "app.kubernetes.io/name=mlcomponent-operator")
    assert pod_ready(pod) and pod["spec"]["containers"][0]["image"] == platform.operator_image
    logs = cluster.kubectl("logs", pod["metadata"]["name"], "-n", OPERATOR_NAMESPACE).stdout
    assert f"[{NAMESPACE}/{CLASSIFIER}] Handler 'reconcile' succeeded" in logs, logs[-3000:]


def test_infer_through_the_pod_ip_and_the_cluster_ip(platform: Platform, components: None) -> None:
    urls = [f"http://{p['status']['podIP']}:8080" for p in pods(platform.cluster, CLASSIFIER)]
    for url in [*urls, service_url(platform.cluster, CLASSIFIER)]:
        response = HTTP.post(f"{url}/v2/models/{CLASSIFIER}/infer", json=infer_body(), timeout=30)
        assert labels(response) == ["setosa", "virginica"], f"through {url}"


def test_a_file_round_trip_goes_through_the_s3_file_box(platform: Platform, components: None) -> None:
    from mlcomponent.client import Client

    wait_for_condition(platform.cluster, TABLE, "True")
    sample = IRIS / "iris" / "sample.csv"
    with Client(service_url(platform.cluster, TABLE), TABLE, timeout=60) as client:
        result = client.infer(files={"table": sample}, outputs=["predictions", "rows"])
        uploaded = result.raw["parameters"]["uploaded_files"]["table"]
        output = result.files["predictions"]
        keys = platform.s3.keys("users")
        assert uploaded in keys, f"the upload {uploaded!r} is not in the file box: {keys}"
        assert output.key in keys, f"the output {output.key!r} is not in the file box: {keys}"
        saved = client.download(output, platform.work / "predictions.csv")
    table = saved.read_text().splitlines()
    rows = len(sample.read_text().splitlines()) - 1
    assert table[0].endswith(",species") and len(table) == rows + 1, table[:3]
    assert [int(v) for v in result["rows"]] == [rows]
    platform.cluster.kubectl("delete", "mlc", TABLE, "-n", NAMESPACE, "--wait=false")  # the last test checks it left


# --------------------------------------------------------------------------- failures reach the status


def test_a_module_whose_import_fails_says_why_in_status(platform: Platform, components: None) -> None:
    condition = wait_for_condition(platform.cluster, "import-fails", "False", "ServeFailed", timeout=180)
    print(condition["message"])
    message = condition["message"]
    # "exited with code 1", "restarted after it exited with code 1" or "...; CrashLoopBackOff": which the
    # operator sees depends on when it looks at the restarting container; each names the exit
    assert "container inference" in message and "exited with code 1" in message, message
    assert "last log lines" in message and "no module named 'iris.no_such_module'" in message, message


def test_an_image_without_python_says_why_in_status(platform: Platform, components: None) -> None:
    condition = wait_for_condition(platform.cluster, "no-python", "False", "PythonNotFound", timeout=120)
    print(condition["message"])
    message = condition["message"]
    assert "init container install-mlcomponent" in message and '"python3"' in message, message
    assert "executable file not found" in message, message


def test_an_unknown_registry_is_refused_with_the_setting_named(platform: Platform, components: None) -> None:
    condition = wait_for_condition(platform.cluster, "unknown-registry", "False", "UnknownPackageRegistry", timeout=60)
    print(condition["message"])
    assert "'lab-registry'" in condition["message"] and "`registries`" in condition["message"], condition
    assert platform.cluster.get("deployment", "unknown-registry", NAMESPACE) is None, "a Deployment was made anyway"
    platform.cluster.kubectl("delete", "mlc", *BROKEN, "-n", NAMESPACE, "--wait=false")


# --------------------------------------------------------------------------- changes under load


def test_a_deleted_pod_drains_without_a_failed_request(platform: Platform, components: None) -> None:
    cluster = platform.cluster
    wait_for_condition(cluster, CLASSIFIER, "True")
    url = f"{service_url(cluster, CLASSIFIER)}/v2/models/{CLASSIFIER}/infer"
    with RequestLoop(url, infer_body()) as loop:
        victim = pods(cluster, CLASSIFIER)[0]["metadata"]["name"]
        cluster.kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")
        eventually(lambda: finished(cluster, victim), timeout=120, what=f"pod {victim} terminated")
        before = len(loop.answers)
        eventually(lambda: len(loop.answers) >= before + 10, timeout=30, what="answers after the pod left")
    assert not loop.failures, f"{len(loop.failures)} of {len(loop.failures) + len(loop.answers)} requests failed " \
                              f"while pod {victim} terminated: {loop.failures[:5]}"
    cluster.kubectl("scale", "deployment", CLASSIFIER, "-n", NAMESPACE, "--replicas", "1")
    eventually(lambda: len(pods(cluster, CLASSIFIER)) == 1, timeout=120, what="back to one pod")


def test_an_env_change_rolls_out_a_new_pod_without_a_failed_request(platform: Platform, components: None) -> None:
    cluster = platform.cluster
    wait_for_condition(cluster, CLASSIFIER, "True")
    old = {p["metadata"]["name"] for p in all_pods(cluster, CLASSIFIER)}
    url = f"{service_url(cluster, CLASSIFIER)}/v2/models/{CLASSIFIER}/infer"
    # min_confidence 1: every row gets the label that IRIS_UNSURE_LABEL (spec.env) names
    with RequestLoop(url, infer_body({"min_confidence": 1.0})) as loop:
        cluster.kubectl("patch", "mlc", CLASSIFIER, "-n", NAMESPACE, "--type", "merge", "-p",
                        json.dumps({"spec": {"env": [{"name": "IRIS_UNSURE_LABEL", "value": "doubtful"}]}}))
        generation = (cluster.get("mlc", CLASSIFIER, NAMESPACE) or {})["metadata"]["generation"]

        def rolled_out() -> bool:
            condition = ready_condition(cluster, CLASSIFIER)
            return (condition.get("status") == "True" and condition.get("observedGeneration") == generation
                    and "doubtful" in loop.seen() and all(finished(cluster, name) for name in old))

        eventually(rolled_out, timeout=240, what="the new pod serving, the old one gone",
                   explain=lambda: f"{ready_condition(cluster, CLASSIFIER)}; answers: {loop.seen()}")
    assert not loop.failures, f"{len(loop.failures)} of {len(loop.failures) + len(loop.answers)} requests failed " \
                              f"during the rollout: {loop.failures[:5]}"
    assert loop.seen() == ["unsure", "doubtful"], f"answers in order: {loop.seen()}"
    env = {e["name"]: e.get("value") for e in pods(cluster, CLASSIFIER)[0]["spec"]["containers"][0]["env"]}
    assert env["IRIS_UNSURE_LABEL"] == "doubtful"


def test_deleting_the_components_removes_everything(platform: Platform, components: None) -> None:
    cluster = platform.cluster
    assert cluster.get("deployment", CLASSIFIER, NAMESPACE) is not None
    # the classifier, and whatever an earlier test did not delete already (they do, to free the node)
    cluster.kubectl("delete", "mlc", "--all", "-n", NAMESPACE, "--wait=true", "--timeout=60s")

    def left() -> list[str]:
        found = cluster.items("deployments,replicasets,pods,services,configmaps", NAMESPACE,
                              "app.kubernetes.io/managed-by=mlcomponent-operator")
        return [f"{o['kind']}/{o['metadata']['name']}" for o in found]

    eventually(lambda: not left(), timeout=120, what="every object of the components removed",
               explain=lambda: f"left: {left()}")
