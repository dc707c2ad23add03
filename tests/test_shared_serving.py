"""``serving/``: what both transports decide in one place (the transports' own tests run them for real)."""

from __future__ import annotations

import grpc

from mlcomponent.errors import FunctionFailed, MethodNotAllowed, NotReady
from mlcomponent.grpc.service import status_of
from mlcomponent.http.responses import error_payload
from mlcomponent.metrics import Metrics
from mlcomponent.serving.auth import Auth
from mlcomponent.serving.errors import Failure, describe
from mlcomponent.serving.requests import Requests


def test_one_failure_two_renderings() -> None:
    """REST's body and headers and gRPC's code, message and trailers come from the same ``Failure``."""
    error = NotReady("the model is loading; retry", retry_after=3)
    assert describe(error, "GET /") == Failure(503, "the model is loading; retry", retry_after=3)
    status, body, headers = error_payload(error, {"method": "GET", "path": "/"})
    assert (status, body) == (503, b'{"error":"the model is loading; retry"}') and (b"retry-after", b"3") in headers
    assert status_of(error, "ModelInfer") == (grpc.StatusCode.UNAVAILABLE, "the model is loading; retry",
                                              (("retry-after", "3"),))
    assert describe(MethodNotAllowed("use POST", allow="POST"), "GET /x").allow == "POST"


def test_hidden_errors_say_the_type_on_both_transports() -> None:
    error = FunctionFailed("secret detail", exception_type="ValueError")
    failure = describe(error, "gRPC ModelInfer", hide_errors=True)
    assert failure.status == 500 and failure.message.startswith("inference raised ValueError;")
    assert "secret" not in failure.message
    assert status_of(error, "ModelInfer", hide_errors=True)[1] == failure.message
    unexpected = describe(RuntimeError("boom at /srv/data/x"), "GET /").message  # its text goes to the log only
    assert unexpected.startswith("internal error (RuntimeError);") and "boom" not in unexpected
    full = describe(OSError(28, "No space left on device", "/srv/data/x"), "POST /")
    assert full.status == 507 and "/srv" not in full.message


def test_one_open_endpoint_policy() -> None:
    auth = Auth("t0ken")
    for endpoint in ("health", "metrics", "playground"):
        assert auth.allows(endpoint, None)
    for endpoint in ("infer", "ready", "model_metadata", "server_metadata", "files", "other"):
        assert not auth.allows(endpoint, None) and not auth.allows(endpoint, "Bearer wrong")
        assert auth.allows(endpoint, "Bearer t0ken") and auth.allows(endpoint, b"bearer t0ken")
    assert Auth(None).allows("infer", None)


def test_request_ids_are_minted_per_transport_and_a_given_one_is_kept() -> None:
    metrics = Metrics()
    rest, grpc_ = Requests(metrics, "http"), Requests(metrics, "grpc", id_tag="g")
    first, second = rest.new_id(), rest.new_id()
    assert first != second and grpc_.new_id().rsplit("-", 1)[1].startswith("g")
    with rest.track("infer", "client-id", 500) as tracked:
        assert tracked.id == "client-id"
        assert metrics.in_flight._value.get() == 1
        tracked.status = 200
    assert metrics.in_flight._value.get() == 0
    assert metrics.requests.labels("infer", "200", "http")._value.get() == 1
