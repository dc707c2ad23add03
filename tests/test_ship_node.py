"""The user's way, on a real node (../shared/tools/k8s/node.sh) with a real image registry:
`init` → `build` → `push` → `upload` → `deploy` → infer through the Service → `upload` a second
model while requests run → `scale` to 2 replicas → a download link from one pod served by the other.

The registry is Debian's `docker-registry` (the CNCF Distribution registry) on the node's
bridge address, and the node pulls from it over plain HTTP (PLAIN_HTTP_REGISTRIES); the
image's tag is `latest`, so Kubernetes pulls it (imagePullPolicy: Always) and the pods'
imageID names the registry. S3 is moto on the node's address, the package index that
the init container installs mlcomponent from is served there too, and the operator runs
as a process with a 2 s model poll. The machine-wide node lock is the one
tests/test_kubernetes_node.py takes: one node per machine. Each step's time is printed
(pytest -n 0 -s: one lane, output shown); on a failure, test-artifacts/<test>/ gets the objects, events and logs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
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

from tests import images, registry
from tests.conftest import S3_ENV, S3Endpoint
from tests.k8s import (
    NODE_IP,
    Cluster,
    collect_artifacts,
    eventually,
    machine_lock,
    moto_on,
    node_cluster,
    node_prerequisites,
    operator,
)
from tests.support import HTTP, ROOT, free_port, not_run, stop_group, wait_until_live

pytestmark = pytest.mark.timeout(1500)
NAMESPACE = "pu-ship-node"
MODULE = "shipdemo"
BOX = f"{MODULE}-data"
POLL_SECONDS = 2
FEATURES = [1.0, 2.0, 3.0]
FIRST_MODEL = {"weights": [0.4, -0.2, 0.1], "bias": 0.05}  # scores 0.35
SECOND_MODEL = {"weights": [0.0, 0.0, 0.0], "bias": 7.0}  # scores 7.0
CONTENT = "unified-platform.cs.hse.ru/model-content"
# the developer's one change to what `init` wrote: an optional FILE output, to download
REPORT_DOC = ('        label (str, shape=[-1]): "high" when the score passes the threshold, else "low".\n',
              '        report (FILE, shape=[1], content_type=text/plain, optional): the scores as text.\n')
REPORT_CODE = '''
    outputs = []
    for field in output_fields:
        if field["name"] == "report":
            with open(field["data"], "w", encoding="utf-8") as stream:
                stream.write("\\n".join(str(s) for s in scores) + "\\n")
            outputs.append({"name": "report", "datatype": "FILE", "data": field["data"], "shape": [1],
                            "content_type": "text/plain"})
        else:
            outputs.append({"name": field["name"], **results[field["name"]]})
    return outputs, model
'''
TIMES: dict[str, float] = {}
DOC = ROOT / "docs" / "kubernetes.md"
# what only this machine needs beside the documented commands (no public registry, a test namespace)
EXTRA = {"build": ["--from", images.BASE_IMAGE, "--network", "none"], "deploy": ["--timeout", "400"],
         "status": ["-n", NAMESPACE], "scale": ["-n", NAMESPACE]}


def doc_commands() -> list[list[str]]:
    """The commands of docs/kubernetes.md's "Ship a module" block, in order."""
    block = re.search(r"^```bash not-run: here; tests/test_ship_node\.py runs it[^\n]*\n(.*?)^```", DOC.read_text(),
                      re.M | re.S)
    assert block, f"{DOC} has no Ship a module block (```bash not-run: here; tests/test_ship_node.py runs it...)"
    lines = (line.split("#", 1)[0] for line in block.group(1).splitlines())
    return [shlex.split(part) for line in lines for part in line.split("&&") if part.strip()]


@dataclass
class Shipyard:
    """The platform and the module; ``step(n)`` runs the docs' n-th command in the module's folder."""

    cluster: Cluster
    work: Path
    module: Path
    image: str
    s3: S3Endpoint
    operator_config: Path
    operator_log: Path
    logs: list[Path] = field(default_factory=list)

    commands: list[list[str]] = field(default_factory=doc_commands)

    @property
    def manifest(self) -> Path:
        return self.module / "mlcomponent.yaml"

    def step(self, index: int) -> subprocess.CompletedProcess[str]:
        command = self.commands[index]
        if command[0] == "kubectl":
            started = time.monotonic()
            result = self.cluster.kubectl(*command[1:], *EXTRA.get(command[1], []))
            TIMES[command[1]] = time.monotonic() - started
            return result
        assert command[0] == "mlcomponent", command
        return self.cli(*command[1:], *EXTRA.get(command[1], []))

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {**images.podman_env(), **S3_ENV, "KUBECONFIG": str(self.cluster.kubeconfig),
               "BOX_KEY": S3_ENV["AWS_ACCESS_KEY_ID"], "BOX_SECRET": S3_ENV["AWS_SECRET_ACCESS_KEY"]}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "mlcomponent", *args], capture_output=True, text=True,
                                env=env, timeout=timeout, cwd=self.module)
        TIMES[args[0]] = TIMES.get(args[0], 0.0) + time.monotonic() - started
        assert result.returncode == 0, f"mlcomponent {' '.join(args)}:\n{result.stdout}\n{result.stderr[-4000:]}"
        return result


@contextmanager
def image_registry(address: str, work: Path) -> Iterator[str]:
    """Debian's docker-registry on ``address`` (host:port), storage in a temp folder."""
    if not shutil.which("docker-registry"):
        installed = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-registry"],
                                   capture_output=True, text=True, timeout=600,
                                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        assert installed.returncode == 0, installed.stderr[-2000:]
    config = work / "registry.yml"
    config.write_text(yaml.safe_dump({"version": 0.1, "log": {"level": "warn"},
                                      "storage": {"filesystem": {"rootdirectory": str(work / "registry")}},
                                      "http": {"addr": address}}))
    log = work / "registry.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until_live(f"http://{address}", process, log, path="/v2/")
        yield address
    finally:
        stop_group(process)



def _module(work: Path, image: str, init: list[str], s3: S3Endpoint) -> Path:
    """What the docs' `mlcomponent init` writes, with the developer's edits: image, namespace, cpu, a FILE output;
    and the --boxes file for `upload` (the box's S3 and the env vars of its credentials)."""
    assert init[:2] == ["mlcomponent", "init"], init
    folder = work / init[2]
    started = time.monotonic()
    made = subprocess.run([sys.executable, "-m", *init], capture_output=True, text=True, timeout=60, cwd=work)
    TIMES["init"] = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    data = yaml.safe_load((folder / "mlcomponent.yaml").read_text())
    data["metadata"]["namespace"] = NAMESPACE
    data["spec"]["image"] = {"existingImageName": image, "resourceLimits": {"cpu": "500m", "memory": "512M"}}
    (folder / "mlcomponent.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    predict = folder / MODULE / "predict.py"
    text = predict.read_text()
    assert REPORT_DOC[0] in text and "    return [{" in text, "the scaffold changed: update this test's edit"
    text = text.replace(REPORT_DOC[0], REPORT_DOC[0] + REPORT_DOC[1])
    text = text[:text.index("    return [{")] + REPORT_CODE.lstrip("\n")
    predict.write_text(text)
    s3.boxes_file(folder, BOX)
    return folder


@pytest.fixture(scope="module")
def shipyard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shipyard]:
    reason = node_prerequisites()
    if reason:
        not_run(reason)
    work = tmp_path_factory.mktemp("ship-node")
    with ExitStack() as stack:
        stack.enter_context(machine_lock("mlcomponent-e2e-node"))  # the node test's lock: one node per machine
        started = time.monotonic()
        images.ensure_podman()
        wheel = registry.build_wheel(work / "dist")
        dependencies = registry.gather_wheels(registry.dependency_requirements(()))
        tree = registry.publish(work / "index", [wheel, *(w for w in dependencies.glob("*.whl")
                                                          if not w.name.startswith("mlcomponent-"))])
        registry_address = f"{NODE_IP}:{free_port()}"
        cluster = stack.enter_context(node_cluster(work / "k8s", [images.BASE_IMAGE],
                                                   {"PLAIN_HTTP_REGISTRIES": registry_address}))
        stack.enter_context(image_registry(registry_address, work))
        index_url = stack.enter_context(registry.serve(tree, NODE_IP, work / "index.log"))
        s3 = stack.enter_context(moto_on(NODE_IP, work / "moto.log"))
        TIMES["platform"] = time.monotonic() - started
        for bucket in (BOX, "users"):
            s3.bucket(bucket)
        cluster.kubectl("create", "namespace", NAMESPACE)
        for box in (BOX, "users"):
            cluster.kubectl("create", "secret", "generic", f"{box}-s3", "-n", NAMESPACE,
                            f"--from-literal=accessKey={S3_ENV['AWS_ACCESS_KEY_ID']}",
                            f"--from-literal=secretKey={S3_ENV['AWS_SECRET_ACCESS_KEY']}")
        crd = subprocess.run([sys.executable, "-m", "mlcomponent", "crd"], capture_output=True, text=True, check=True)
        cluster.kubectl("apply", "-f", "-", input=crd.stdout)
        cluster.kubectl("wait", "--for", "condition=established", "--timeout=60s",
                        "crd/mlcomponents.unified-platform.cs.hse.ru")
        config = work / "operator.yaml"
        config.write_text(yaml.safe_dump({"registries": {"python-package-registry": index_url}, "s3Endpoint": s3.url,
                                          "s3Region": "us-east-1", "boxSecret": "{box}-s3",
                                          "modelPollSeconds": POLL_SECONDS}))
        log = work / "operator.log"
        stack.enter_context(operator(cluster, log, "--config", str(config)))
        image = f"{registry_address}/{MODULE}:latest"
        commands = doc_commands()
        assert [c[:2] for c in commands] == [
            ["mlcomponent", "init"], ["cd", MODULE], ["mlcomponent", "build"], ["mlcomponent", "push"],
            ["mlcomponent", "upload"], ["mlcomponent", "deploy"], ["mlcomponent", "upload"], ["kubectl", "scale"],
            ["mlcomponent", "status"]], f"the steps of {DOC}'s Ship a module changed: update this test"
        yard = Shipyard(cluster, work, _module(work, image, commands[0], s3), image, s3, config, log,
                        logs=[log, work / "moto.log", work / "index.log", work / "registry.log"], commands=commands)
        yield yard
        print("\nship e2e, seconds per step: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMES.items()))


@pytest.fixture(autouse=True)
def artifacts_on_failure(request: pytest.FixtureRequest, shipyard: Shipyard) -> Iterator[None]:
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        collect_artifacts(shipyard.cluster, ROOT / "test-artifacts" / request.node.name, [NAMESPACE], shipyard.logs)


# --------------------------------------------------------------------------- helpers


def service_url(cluster: Cluster) -> str:
    service = cluster.get("service", MODULE, NAMESPACE)
    assert service is not None
    return f"http://{service['spec']['clusterIP']}:80/v2/models/{MODULE}"


def score(response: httpx.Response) -> float:
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return round(float(next(o for o in response.json()["outputs"] if o["name"] == "score")["data"][0]), 3)


BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": FEATURES}],
        "outputs": [{"name": "score"}, {"name": "label"}]}


def live_pods(cluster: Cluster) -> list[dict[str, Any]]:
    listed = cluster.items("pods", NAMESPACE, f"app.kubernetes.io/instance={MODULE}")
    return [p for p in listed if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


class RequestLoop:
    """Requests through the Service, one new connection each, bounded in count and time."""

    def __init__(self, url: str, max_requests: int = 20000, max_seconds: float = 300) -> None:
        self.url, self.max_requests, self.max_seconds = url, max_requests, max_seconds
        self.answers: list[tuple[float, float]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.answers) + len(self.failures) < self.max_requests:
            now = time.monotonic()
            if now - self.started > self.max_seconds:
                return
            try:
                response = HTTP.post(self.url, json=BODY, timeout=10, headers={"Connection": "close"})
                if response.status_code == 200:
                    self.answers.append((now, score(response)))
                else:
                    self.failures.append((now, f"HTTP {response.status_code}: {response.text[:200]}"))
            except httpx.HTTPError as error:
                self.failures.append((now, f"{type(error).__name__}: {error}"))
            self._stop.wait(0.05)

    def __enter__(self) -> RequestLoop:
        self.started = time.monotonic()
        self._thread.start()
        eventually(lambda: len(self.answers) >= 5, timeout=30, what="the request loop's first answers",
                   explain=lambda: f"failures: {self.failures[:5]}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


# --------------------------------------------------------------------------- the user's way


def test_build_push_upload_deploy_and_infer(shipyard: Shipyard) -> None:
    yard = shipyard
    built = yard.step(2)
    assert f"built {yard.image} (with podman)" in built.stdout
    pushed = yard.step(3)
    assert f"pushed {yard.image}" in pushed.stdout
    (yard.module / yard.commands[4][3]).write_text(json.dumps(FIRST_MODEL))
    uploaded = yard.step(4)
    assert f"-> {BOX}/users/developer/file_groups/models/model.json" in uploaded.stdout
    deployed = yard.step(5)
    assert deployed.stdout.startswith(f"{NAMESPACE}/{MODULE} is Ready (1/1 replicas available)"), deployed.stdout
    print(f"\ndeploy's live status lines:\n{deployed.stderr}")
    [pod] = live_pods(yard.cluster)
    main = next(c for c in pod["spec"]["containers"] if c["name"] == "inference")
    assert main["image"] == yard.image and main["imagePullPolicy"] == "Always"
    image_id = next(s["imageID"] for s in pod["status"]["containerStatuses"] if s["name"] == "inference")
    assert image_id.startswith(f"{yard.image.rsplit(':', 1)[0]}@sha256:"), f"not pulled from the registry: {image_id}"
    started = time.monotonic()
    response = HTTP.post(f"{service_url(yard.cluster)}/infer", json=BODY, timeout=60)
    TIMES["first infer"] = time.monotonic() - started
    assert score(response) == 0.35


def test_a_new_model_reaches_the_replica_with_no_failed_request(shipyard: Shipyard) -> None:
    yard, cluster = shipyard, shipyard.cluster
    old_pods = {p["metadata"]["name"] for p in live_pods(cluster)}
    before = (cluster.get("deployment", MODULE, NAMESPACE) or {})["spec"]["template"]["metadata"]["annotations"][CONTENT]
    (yard.module / yard.commands[6][3]).write_text(json.dumps(SECOND_MODEL))
    with RequestLoop(f"{service_url(cluster)}/infer") as loop:
        uploaded_at = time.monotonic()
        yard.step(6)

        def rolled() -> bool:
            gone = all(cluster.get("pod", name, NAMESPACE) is None or _finished(cluster, name) for name in old_pods)
            return gone and bool(loop.answers) and loop.answers[-1][1] == 7.0

        eventually(rolled, timeout=300, what="the new model served by the new pod, the old pod gone",
                   explain=lambda: f"answers: {sorted(set(a for _, a in loop.answers))}; {loop.failures[:3]}")
        done_at = time.monotonic()
        count = len(loop.answers)
        eventually(lambda: len(loop.answers) >= count + 20, timeout=60, what="answers after the rollout")
    first_new = next(t for t, value in loop.answers if value == 7.0)
    after = [value for t, value in loop.answers if t >= done_at]
    print(f"\nmodel update: {len(loop.answers)} answers ({sum(v == 0.35 for _, v in loop.answers)} old, "
          f"{sum(v == 7.0 for _, v in loop.answers)} new), {len(loop.failures)} failed; first new answer "
          f"{first_new - uploaded_at:.1f}s after the upload, old pod gone {done_at - uploaded_at:.1f}s after it")
    TIMES["model update"] = done_at - uploaded_at
    assert not loop.failures, f"{len(loop.failures)} requests failed during the model update: {loop.failures[:5]}"
    assert set(after) == {7.0}, f"old answers after the rollout: {after}"
    assert {v for _, v in loop.answers} <= {0.35, 7.0}
    last_old = max((t for t, v in loop.answers if v == 0.35), default=uploaded_at)
    assert last_old <= first_new + 60, "old and new answers mixed for longer than a rollout"
    deployment = cluster.get("deployment", MODULE, NAMESPACE) or {}
    after_hash = deployment["spec"]["template"]["metadata"]["annotations"][CONTENT]
    assert after_hash != before
    [pod] = live_pods(cluster)
    metadata = HTTP.get(f"http://{pod['status']['podIP']}:8080/v2/models/{MODULE}", timeout=10).json()
    assert metadata["parameters"]["model_version"] == after_hash


def _finished(cluster: Cluster, name: str) -> bool:
    pod = cluster.get("pod", name, NAMESPACE)
    if pod is None:
        return True
    statuses = pod["status"].get("containerStatuses") or []
    return bool(statuses) and all("terminated" in s["state"] for s in statuses)


def test_scaled_to_two_a_link_from_one_pod_is_served_by_the_other(shipyard: Shipyard) -> None:
    yard, cluster = shipyard, shipyard.cluster
    started = time.monotonic()
    yard.step(7)  # kubectl scale deployment shipdemo --replicas 2
    def two_ready() -> list[dict[str, Any]] | None:
        found = live_pods(cluster)
        return found if len(found) == 2 and all(map(ready, found)) else None

    pods = eventually(two_ready, timeout=300, what="two ready replicas")
    TIMES["scale to 2"] = time.monotonic() - started
    contents = {p["metadata"]["annotations"][CONTENT] for p in pods}
    assert len(contents) == 1, f"the replicas serve different model content: {contents}"
    [content] = contents
    shown = yard.step(8)
    for pod in pods:
        assert f"  pod {pod['metadata']['name']}: ready; model {content}" in shown.stdout.splitlines(), shown.stdout
    first, second = (f"http://{p['status']['podIP']}:8080/v2/models/{MODULE}" for p in pods)
    body = {**BODY, "outputs": [{"name": "report"}]}
    answer = HTTP.post(f"{first}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    report = next(o for o in answer.json()["outputs"] if o["name"] == "report")
    key = report["data"][0]
    fetched = HTTP.get(f"{second}/files/{key}", timeout=30)
    assert fetched.status_code == 200, f"{fetched.status_code}: {fetched.text}"
    assert fetched.text == "7.0\n"
    parts = key.split("/")
    parts[-2] = parts[-2][:-1] + ("1" if parts[-2][-1] == "0" else "0")  # <request-id>-<signature>
    forged = HTTP.get(f"{second}/files/{'/'.join(parts)}", timeout=30)
    assert forged.status_code == 404, "a key that is not signed with the component's secret was served"
