"""The outermost ASGI layer: request id, bearer auth and metrics, for every request.

Pure ASGI because every request passes here. ``POST …/infer`` goes straight to the
infer endpoint (the same object the route table holds) without Starlette's routing;
everything else goes to the Starlette app. Bench numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlcomponent.http.auth import bearer_matches
from mlcomponent.http.infer import InferEndpoint, model_of_infer_path
from mlcomponent.http.responses import HIDE_ERRORS, JSON_HEADERS, header, respond
from mlcomponent.logs import request_id
from mlcomponent.metrics import Metrics

OPEN_PREFIXES = ("/v2/health/", "/metrics")
UNAUTHORIZED = b'{"error":"this endpoint needs `Authorization: Bearer <token>`; the token was missing or wrong"}'
_PREFIX = f"{os.getpid():x}-{os.urandom(3).hex()}-".encode()


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
        self.token = token.encode() if token else None
        self.hide_errors = hide_errors
        self._ids = itertools.count()

    def _authorised(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if self.token is None or path.startswith(OPEN_PREFIXES) or path == "/":
            return True
        return bearer_matches(header(scope, b"authorization"), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope["mlcomponent.arrived"] = time.monotonic()
        if self.hide_errors:
            scope[HIDE_ERRORS] = True
        rid = header(scope, b"x-request-id") or _PREFIX + b"%x" % next(self._ids)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        reset = request_id.set(rid.decode("latin-1"))
        self.metrics.in_flight.inc()
        try:
            if not self._authorised(scope):
                await respond(send_with_id, 401, UNAUTHORIZED, [*JSON_HEADERS, (b"www-authenticate", b"Bearer")])
            elif scope["method"] == "POST" and model_of_infer_path(scope["path"]) is not None:
                await self.infer(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            request_id.reset(reset)
            self.metrics.observe_request(endpoint_of(scope["path"]), status, time.perf_counter() - started)
