"""`scripts/test.sh` on a machine without root, apt, chromium, kubectl or ../shared.

It must say what it could not install and run the rest; the tests that needed what is
missing are listed at the end as not run, with the reason (never a FileNotFoundError,
never a silent pass), and on CI (``CI`` set) they fail.

The run is real (``test.sh`` in a fresh copy of the repository, no ../shared beside it),
with two shortcuts: PATH is a folder of links to this machine's commands without
``apt-get``, ``kubectl`` and ``chromium``, where ``id -u`` says 1000; and the copy's
.venv reaches this test run's installed packages through a ``.pth`` file, so that
``setup.sh`` installs only mlcomponent itself there instead of downloading everything.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checkout import copy_worktree, remove_in_background
from tests.support import ROOT

HIDDEN = {"apt-get", "apt", "kubectl", "chromium", "sudo"}
SELECTED = ["tests/test_playground.py", "tests/test_kubernetes_e2e.py"]


def path_without(hidden: set[str], folder: Path, uid: str | None) -> str:
    """A PATH of one folder linking every command on this PATH but ``hidden``; ``id -u`` prints ``uid``."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not directory or not Path(directory).is_dir() or directory == str(Path(sys.executable).parent):
            continue
        for entry in Path(directory).iterdir():
            link = folder / entry.name
            if entry.name not in hidden and not link.exists() and entry.is_file() and os.access(entry, os.X_OK):
                link.symlink_to(entry)
    if uid is not None:
        real = folder / "id"
        target = real.resolve()
        real.unlink()
        real.write_text(f'#!/bin/sh\nif [ "$1" = "-u" ]; then echo {uid}; else exec {target} "$@"; fi\n')
        real.chmod(0o755)
    return str(folder)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = copy_worktree(tmp_path_factory.mktemp("no-root") / "mlcomponent")
    subprocess.run([sys._base_executable, "-m", "venv", str(root / ".venv")], check=True)  # type: ignore[attr-defined]
    ours = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run([str(root / ".venv/bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(theirs, "zz-test-run-packages.pth").write_text(ours + "\n")
    try:
        yield root
    finally:
        remove_in_background(root)


def environment(path: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PYTEST_") and key not in ("VIRTUAL_ENV", "PYTHONPATH", "CI")}
    return {**env, "PATH": path, "PYTHON": sys._base_executable, **extra}  # type: ignore[attr-defined]


def test_without_root_it_says_what_is_missing_runs_the_rest_and_lists_the_tests_not_run(copy: Path,
                                                                                         tmp_path: Path) -> None:
    path = path_without(HIDDEN, tmp_path / "bin", uid="1000")
    result = subprocess.run(["./scripts/test.sh", *SELECTED, "-p", "no:cacheprovider"], cwd=copy, capture_output=True,
                            text=True, env=environment(path), timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert ("test: chromium is missing and this is not root: run 'sudo apt-get install --no-install-recommends "
            "chromium', or the browser tests are not run") in result.stderr
    assert ("test: kubectl is missing and this is not root: run 'sudo apt-get install --no-install-recommends "
            "kubernetes-client', or the Kubernetes tests are not run") in result.stderr
    assert "test: ../shared/tools/k8s is not here (it sits beside the repository); the Kubernetes tests are not run" \
        in result.stderr
    assert "FileNotFoundError" not in output and "Traceback" not in output
    summary = result.stdout[result.stdout.index("test(s) not run: this machine lacks what they need"):]
    not_run = re.findall(r"^NOT RUN (\S+): because (.*)$", summary, re.M)
    browser = [reason for test, reason in not_run if test.startswith("tests/test_playground.py::")]
    cluster = [reason for test, reason in not_run if test.startswith("tests/test_kubernetes_e2e.py::")]
    assert browser and all(reason.startswith("Debian's chromium is not installed") for reason in browser), not_run
    assert len(cluster) >= 10 and all(r.startswith(f"{copy.parent}/shared/tools/k8s is not here") for r in cluster), not_run
    assert len(not_run) == len(browser) + len(cluster)
    last = result.stdout.strip().splitlines()[-1]
    assert f"{len(not_run)} skipped" in last and "failed" not in last and "error" not in last, last


def test_as_root_without_apt_it_says_so_and_goes_on(copy: Path, tmp_path: Path) -> None:
    path = path_without(HIDDEN, tmp_path / "bin", uid="0")
    result = subprocess.run(["./scripts/test.sh", "tests/test_playground.py", "-p", "no:cacheprovider", "-q"], cwd=copy,
                            capture_output=True, text=True, env=environment(path), timeout=900)
    assert "test: chromium is missing and there is no apt-get here: install chromium (Debian's name), " \
           "or the browser tests are not run" in result.stderr
    assert "test: kubectl is missing and there is no apt-get here: install kubernetes-client" in result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT RUN tests/test_playground.py::" in result.stdout


def test_on_ci_a_test_that_cannot_run_fails(copy: Path, tmp_path: Path) -> None:
    path = path_without(HIDDEN, tmp_path / "bin", uid=None)
    result = subprocess.run([str(copy / ".venv/bin/python"), "-m", "pytest", "tests/test_playground.py", "-q",
                             "-p", "no:cacheprovider"], cwd=copy, capture_output=True, text=True,
                            env=environment(path, CI="true"), timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Failed: not run on CI, which must run everything: Debian's chromium is not installed" in result.stdout


def test_without_arguments_it_runs_the_static_checks_beside_the_suite_and_fails_with_them(copy: Path,
                                                                                          tmp_path: Path) -> None:
    """ruff and mypy run after pytest (scripts/lint.sh), not inside it; a lint failure fails the run.

    The suite is narrowed to one file with PYTEST_ADDOPTS: test.sh itself is called as the README does.
    """
    probe = copy / "mlcomponent" / "_lint_probe.py"
    probe.write_text('"""An unused import, on purpose."""\n\nimport os\n')
    if (ROOT / ".mypy_cache").is_dir() and not (copy / ".mypy_cache").exists():
        shutil.copytree(ROOT / ".mypy_cache", copy / ".mypy_cache")  # warm: mypy rechecks only what differs
    path = path_without(HIDDEN, tmp_path / "bin", uid="1000")
    try:
        result = subprocess.run(["./scripts/test.sh"], cwd=copy, capture_output=True, text=True, timeout=900,
                                env=environment(path, PYTEST_ADDOPTS="tests/test_quality.py -p no:cacheprovider"))
    finally:
        probe.unlink()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert re.search(r"^=+ 1 passed", result.stdout, re.M), output  # the suite ran, and passed
    assert "mlcomponent/_lint_probe.py:3:8: F401" in output
    assert "test: ruff or mypy failed (above)" in result.stderr
