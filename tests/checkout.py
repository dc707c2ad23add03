"""A fresh copy of the repository (see the ``fresh_checkout`` fixture in conftest.py), and a terminal in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, not_run


def copy_worktree(root: Path) -> Path:
    """Copy the working tree as a fresh clone of it has it: tracked and new files, nothing ignored."""
    if shutil.which("git") is None:
        not_run("git is not installed (it lists what a clone of the repository holds)")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode != 0:
        not_run(f"{ROOT} is not a git checkout, so there is nothing to clone: {listed.stderr.decode().strip()}")
    for name in filter(None, listed.stdout.split(b"\0")):
        source = ROOT / os.fsdecode(name)
        if source.is_file():  # a tracked file deleted in the working tree is not in a clone of it either
            target = root / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


def remove_in_background(folder: Path) -> None:
    """A copy with a .venv is some 20,000 files: removed without waiting for it."""
    subprocess.Popen(["rm", "-rf", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)


class Checkout:
    """A fresh copy of the repository, as a new user's clone has it, and a terminal in it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def venv(self) -> Path:
        return self.root / ".venv"

    def env(self, **extra: str) -> dict[str, str]:
        """This environment without the test run's own virtualenv, pytest's variables or PYTHONPATH."""
        ours = str(Path(sys.executable).parent)
        path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry and entry != ours]
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("PYTEST_") and key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        return {**env, "PATH": os.pathsep.join(path), **extra}

    def bash(self, script: str, *, timeout: float = 300, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in a terminal at the checkout's root, after ``. .venv/bin/activate`` (as the README says)."""
        return subprocess.run(["bash", "-euo", "pipefail", "-c", f". .venv/bin/activate\n{script}"], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, env=env or self.env())
