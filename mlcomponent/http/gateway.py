"""The outermost ASGI layer: request id, bearer auth and metrics (``serving/``'s wrapper), for every request.

Pure ASGI because every request passes here. ``POST …/infer`` goes straight to the
infer endpoint (the same object the route table holds) without Starlette's routing;
everything else goes to the Starlette app. Admission's refusals are answered before
all that, by the connection (``answer_early``, ``early.py``), with the same id, auth,
metrics and error text. Bench numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlcomponent.http.early import Answer, Headers, request_path
from mlcomponent.http.infer import InferEndpoint, model_of_infer_path
from mlcomponent.http.responses import HIDE_ERRORS, JSON_HEADERS, error_payload, header, respond
from mlcomponent.metrics import Metrics
from mlcomponent.serving.auth import Auth
from mlcomponent.serving.requests import Requests

UNAUTHORIZED = b'{"error":"this endpoint needs `Authorization: Bearer <token>`; the token was missing or wrong"}'


def endpoint_of(path: str) -> str:
    """A small, fixed set of metric labels (never the raw path: unbounded cardinality)."""
    if path.startswith("/v2/models/"):
        if path.endswith("/infer"):
            return "infer"
        if "/files/" in path:
            return "files"
        return "ready" if path.endswith("/ready") else "model_metadata"
    if path.startswith("/v2/health/"):
        return "health"
    return {"/v2": "server_metadata", "/v2/": "server_metadata", "/metrics": "metrics",
            "/": "playground"}.get(path, "other")


class Gateway:
    def __init__(self, app: ASGIApp, infer: InferEndpoint, metrics: Metrics, token: str | None,
                 hide_errors: bool = False) -> None:
        self.app = app
        self.infer = infer
        self.metrics = metrics
        self.auth = Auth(token)
        self.hide_errors = hide_errors
        self.requests = Requests(metrics, "http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["mlcomponent.arrived"] = time.monotonic()
        if self.hide_errors:
            scope[HIDE_ERRORS] = True
        given = header(scope, b"x-request-id")
        endpoint = endpoint_of(scope["path"])
        with self.requests.track(endpoint, given.decode("latin-1") if given else None, 500) as tracked:
            rid = given or tracked.id.encode("latin-1")

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    tracked.status = message["status"]
                    message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
                await send(message)

            if self.auth.token is not None and not self.auth.allows(endpoint, header(scope, b"authorization")):
                await respond(send_with_id, 401, UNAUTHORIZED, [*JSON_HEADERS, (b"www-authenticate", b"Bearer")])
            elif scope["method"] == "POST" and model_of_infer_path(scope["path"]) is not None:
                await self.infer(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)

    def answer_early(self, method: str, url: bytes, root_path: str, headers: Headers) -> Answer | None:
        """The answer to an infer request that admission refuses now, before its body is read or a request
        cycle is made (``early.py``): 503 with ``Retry-After``, as the infer endpoint would give it. None
        for anything else (not an infer request for this model, not authorized, admitted): the app answers.
        """
        plane = self.infer.plane
        if method != "POST" or not plane.refused_recently():  # admitted requests leave here: see early.py
            return None
        path = request_path(url, root_path)
        if model_of_infer_path(path) != plane.model_name:
            return None
        scope: Scope = {"method": method, "path": path, "headers": headers}
        if self.auth.token is not None and not self.auth.allows("infer", header(scope, b"authorization")):
            return None
        refused = plane.refuse_now()
        if refused is None:
            return None
        given = header(scope, b"x-request-id")  # llhttp has refused a value with control characters (400)
        with self.requests.track("infer", given.decode("latin-1") if given else None, 503) as tracked:
            if self.hide_errors:
                scope[HIDE_ERRORS] = True
            status, body, extra = error_payload(refused, scope)
            tracked.status = status
        return status, [*extra, (b"content-length", b"%d" % len(body)),
                        (b"x-request-id", given or tracked.id.encode("latin-1"))], body
