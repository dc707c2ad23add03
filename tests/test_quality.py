"""The public API is pinned. (ruff and mypy --strict run beside pytest, in scripts/lint.sh, which
scripts/test.sh calls after the suite; tests/test_test_sh.py proves that a lint failure fails it.)"""

from __future__ import annotations


def test_the_public_client_api_is_pinned() -> None:
    import mlcomponent.client as client

    assert sorted(client.__all__) == [
        "AsyncClient", "BadRequestError", "Client", "ClientError", "DeadlineExceeded", "FileOutput", "InferenceError",
        "InferenceResult", "NotFoundError", "NotReadyError", "PayloadTooLargeError", "ServiceUnavailable",
        "UnauthorizedError"]
