"""A real control plane for tests: ../shared/tools/k8s (kube-apiserver v1.20 + etcd) on free ports.

The garbage collector is started on its own (not the whole controller-manager), so
owned objects are collected while Deployment status stays what the test patches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.prerequisites import require_control_plane
from tests.support import ROOT, free_port, stop_group

TOOLS = ROOT.parent / "shared" / "tools" / "k8s"
BIN = Path(os.environ.get("K8S_BIN_DIR", "/var/cache/mlcomponent-k8s/bin"))
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


@contextmanager
def control_plane(folder: Path, garbage_collector: bool = True) -> Iterator[Cluster]:
    require_control_plane()  # "not run, because ..." without ../shared/tools/k8s, kubectl or root
    env = {**os.environ, "K8S_DIR": str(folder), "APISERVER_PORT": str(free_port()), "ETCD_PORT": str(free_port())}
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


@contextmanager
def operator(cluster: Cluster, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "mlcomponent", "operator", *args], stdout=sink,
                                   stderr=subprocess.STDOUT, env=cluster.env, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


def eventually(probe: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy (assertion errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except AssertionError as error:
            last = error
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s" + (f": {last}" if last else ""))


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
