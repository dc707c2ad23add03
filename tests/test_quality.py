"""The code stays typed and linted: mypy --strict and ruff, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT


def test_mypy_strict_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "mlcomponent", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_public_client_api_is_pinned() -> None:
    import mlcomponent.client as client

    assert sorted(client.__all__) == [
        "AsyncClient", "BadRequestError", "Client", "ClientError", "DeadlineExceeded", "FileOutput", "InferenceError",
        "InferenceResult", "NotFoundError", "NotReadyError", "PayloadTooLargeError", "ServiceUnavailable",
        "UnauthorizedError"]
