"""Machine prerequisites of some tests, checked where they are used.

A missing one makes the test "not run, because ..." (``tests.support.not_run``), listed
with its reason at the end of the run, never an error and never a silent pass; on CI
(``CI`` set) it fails instead, since CI must run everything. ``scripts/test.sh`` installs
what it can (as root, with apt) and says what it could not.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

from tests.support import ROOT, not_run

K8S_TOOLS = ROOT.parent / "shared" / "tools" / "k8s"


def require_chromium() -> str:
    """Debian's chromium, which Playwright drives for the browser tests."""
    path = shutil.which("chromium")
    if path is None:
        not_run("Debian's chromium is not installed (scripts/test.sh installs it as root: "
                "apt-get install --no-install-recommends chromium)")
    assert path is not None
    return path


@functools.cache
def _control_plane_problem() -> str | None:
    ensure = K8S_TOOLS / "ensure.sh"
    if not ensure.is_file():
        return f"{K8S_TOOLS} is not here (the Kubernetes tests need ../shared/tools/k8s beside the repository)"
    if shutil.which("kubectl") is None:
        return ("kubectl is not installed (scripts/test.sh installs it as root: "
                "apt-get install --no-install-recommends kubernetes-client)")
    result = subprocess.run([str(ensure)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{ensure} failed (it installs etcd with apt as root): {last}"
    return None


def require_control_plane() -> None:
    """../shared/tools/k8s (kube-apiserver and etcd, set up by its ensure.sh) and kubectl."""
    problem = _control_plane_problem()
    if problem is not None:
        not_run(problem)
