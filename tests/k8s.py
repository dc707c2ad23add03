"""A real control plane for tests: ../shared/tools/k8s (kube-apiserver v1.20 + etcd) on free ports.

``control_plane``: the API server with the garbage collector started on its own (not the
whole controller-manager), so owned objects are collected while Deployment status stays
what the test patches. ``node_cluster``: the whole controller-manager and a real node
(node.sh: containerd, kubelet, kube-proxy) whose pods run the images given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import S3Endpoint
from tests.prerequisites import require_control_plane
from tests.support import HTTP, ROOT, free_port, free_port_pair, stop_group, wait_until_live

TOOLS = ROOT.parent / "shared" / "tools" / "k8s"
BIN = Path(os.environ.get("K8S_BIN_DIR", "/var/cache/mlcomponent-k8s/bin"))
NODE_IP = "10.244.0.1"  # node.sh's bridge: the node's address, reachable from the host and from pods
BRIDGE = "mlck8s0"
T = TypeVar("T")


class Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.kubeconfig = folder / "kubeconfig"
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=self.env,
                                timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def api(self) -> Any:
        from kubernetes import client, config

        return client.ApiClient(config.new_client_from_config(str(self.kubeconfig)).configuration)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json", *(["-l", selector] if selector else [])]
        return list(json.loads(self.kubectl(*args).stdout)["items"])


@contextmanager
def control_plane(folder: Path, garbage_collector: bool = True) -> Iterator[Cluster]:
    require_control_plane()  # "not run, because ..." without ../shared/tools/k8s, kubectl or root
    env = {**os.environ, "K8S_DIR": str(folder), "APISERVER_PORT": str(free_port()), "ETCD_PORT": str(free_port_pair())}
    subprocess.run([str(TOOLS / "ensure.sh")], check=True, capture_output=True, env=env)
    started = subprocess.run([str(TOOLS / "start.sh")], capture_output=True, text=True, env=env)
    if started.returncode != 0:
        raise RuntimeError(f"start.sh failed:\n{started.stdout}\n{started.stderr}")
    cluster = Cluster(folder)
    gc = None
    if garbage_collector:
        log = (folder / "gc.log").open("wb")
        gc = subprocess.Popen([str(BIN / "kube-controller-manager"), "--kubeconfig", str(cluster.kubeconfig),
                               "--leader-elect=false", "--port", "0", "--secure-port", "0",
                               "--controllers", "garbagecollector", "--v=1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield cluster
    finally:
        if gc is not None:
            os.killpg(gc.pid, signal.SIGTERM)
            gc.wait(timeout=20)
        subprocess.run([str(TOOLS / "stop.sh")], env=env, capture_output=True)


def node_prerequisites() -> str | None:
    """Why this machine cannot run node.sh's pods, or None when it can."""
    if not TOOLS.is_dir():
        return f"{TOOLS} is missing (no ../shared beside the checkout)"
    if os.geteuid() != 0:
        return "node.sh needs root (containers, a network bridge, iptables)"
    tools = ("podman", "containerd", "runc", "conntrack", "iptables")
    if not shutil.which("apt-get") and not all(shutil.which(tool) for tool in tools):
        return "there is no apt-get to install podman, containerd and runc"
    return None


def _script(name: str, env: dict[str, str], timeout: float = 900) -> str:
    result = subprocess.run([str(TOOLS / name)], capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@contextmanager
def machine_lock(name: str, timeout: float = 900) -> Iterator[None]:
    """One holder at a time on this machine (node.sh runs one node per machine): waits, bounded."""
    import fcntl

    path = Path("/run/lock") / f"{name}.lock"
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} stayed locked for {timeout}s: another test run holds the node") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bridge_exists() -> bool:
    return subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0


@contextmanager
def node_cluster(folder: Path, images: list[str], extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """start.sh (WITH_KCM=1) and node.sh with ``images`` copied into containerd; stop.sh afterwards."""
    env = {**os.environ, **(extra_env or {}), "K8S_DIR": str(folder), "APISERVER_PORT": str(free_port()),
           "ETCD_PORT": str(free_port_pair()), "WITH_KCM": "1", "IMAGES": " ".join(images)}
    _script("ensure.sh", env)
    try:
        _script("start.sh", env)
        _script("node.sh", env)
        yield Cluster(folder)
    finally:
        subprocess.run([str(TOOLS / "stop.sh")], env=env, capture_output=True, timeout=300)
        if bridge_exists():
            raise RuntimeError(f"stop.sh left the bridge {BRIDGE} behind (ip link show {BRIDGE})")


@contextmanager
def kubectl_proxy(cluster: Cluster, address: str, log: Path) -> Iterator[str]:
    """The API server, which listens on loopback only, for pods: `kubectl proxy` on ``address``."""
    port = free_port()
    with log.open("ab") as sink:
        process = subprocess.Popen(["kubectl", "proxy", "--address", address, "--port", str(port),
                                    "--accept-hosts", "^" + address.replace(".", r"\.") + "$"],
                                   stdout=sink, stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True)
    url = f"http://{address}:{port}"
    try:
        import httpx

        eventually(lambda: HTTP.get(url + "/version", timeout=1).status_code == 200, timeout=20,
                   what=f"kubectl proxy on {url}", retry=(httpx.TransportError,))
        yield url
    finally:
        stop_group(process)


def collect_artifacts(cluster: Cluster, folder: Path, namespaces: list[str], logs: list[Path]) -> None:
    """What explains a failure: objects, events, `kubectl describe` and every container's logs."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(name: str, *args: str) -> None:
        result = cluster.kubectl(*args, check=False)
        (folder / name).write_text(result.stdout + result.stderr)

    save("nodes.txt", "describe", "nodes")
    for namespace in namespaces:
        save(f"{namespace}-objects.yaml", "get", "mlc,deployments,replicasets,pods,services,endpoints,configmaps",
             "-n", namespace, "-o", "yaml")
        save(f"{namespace}-events.txt", "get", "events", "-n", namespace, "--sort-by", ".lastTimestamp")
        save(f"{namespace}-describe-pods.txt", "describe", "pods", "-n", namespace)
        listed = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False)
        for pod in json.loads(listed.stdout)["items"] if listed.returncode == 0 else []:
            name = pod["metadata"]["name"]
            for previous in ("", "--previous"):
                save(f"{namespace}-{name}-logs{previous}.txt", "logs", name, "-n", namespace, "--all-containers",
                     "--prefix", "--tail", "200", *([previous] if previous else []))
    for path in logs:
        if path.exists():
            shutil.copy2(path, folder / path.name)


@contextmanager
def operator(cluster: Cluster, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mlcomponent", "operator", *args], stdout=sink,
                                   stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


def eventually(probe: Callable[[], T | None], timeout: float = 60, what: str = "condition",
               retry: tuple[type[BaseException], ...] = (), explain: Callable[[], str] | None = None) -> T:
    """Poll ``probe`` until it returns something truthy (assertion errors, and ``retry``, count as not yet).

    ``explain`` says, on time-out, what the state was (say, the component's condition).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    expected: tuple[type[BaseException], ...] = (AssertionError, *retry)
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except expected as error:
            last = error
        time.sleep(0.2)
    detail = f": {last}" if last else ""
    raise AssertionError(f"{what} not reached in {timeout}s{detail}" + (f"\n{explain()}" if explain else ""))


def is_subset(expected: Any, actual: Any, path: str = "") -> None:
    """Assert every field of ``expected`` is in ``actual`` (the server adds defaults)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing"
            is_subset(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            is_subset(want, got, f"{path}[{index}]")
    else:
        assert expected == actual or str(expected) == str(actual), f"{path}: {actual!r} != {expected!r}"


@contextmanager
def moto_on(address: str, log: Path) -> Iterator[S3Endpoint]:
    """moto's S3 server on the node's address, where pods reach it."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)], stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{address}:{port}"
    try:
        wait_until_live(url, process, log, path="/moto-api/")
        yield S3Endpoint(url)
    finally:
        stop_group(process)
