"""A fresh copy of the repository (see the ``fresh_checkout`` fixture in conftest.py), and a terminal in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
