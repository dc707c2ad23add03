"""One pure-ASGI middleware for every request: request id, bearer auth, metrics, arrival time.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlcomponent.http.metrics import Metrics, endpoint_of
from mlcomponent.logs import request_id

OPEN_PREFIXES = ("/v2/health/", "/metrics")
UNAUTHORIZED = b'{"error":"this endpoint needs `Authorization: Bearer <token>`; the token was missing or wrong"}'


class Observe:
    def __init__(self, app: ASGIApp, metrics: Metrics, token: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token.encode() if token else None

    def _header(self, scope: Scope, name: bytes) -> bytes | None:
        for key, value in scope["headers"]:
            if key == name:
                return value  # type: ignore[no-any-return]
        return None

    def _authorised(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if self.token is None or path.startswith(OPEN_PREFIXES) or path == "/":
            return True
        given = self._header(scope, b"authorization") or b""
        return given.startswith(b"Bearer ") and hmac.compare_digest(given[7:].strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope["mlcomponent.arrived"] = time.monotonic()
        rid = self._header(scope, b"x-request-id") or uuid.uuid4().hex.encode()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        reset = request_id.set(rid.decode("latin-1"))
        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            if self._authorised(scope):
                await self.app(scope, receive, send_with_id)
            else:
                await _unauthorised(send_with_id)
        finally:
            in_flight.dec()
            request_id.reset(reset)
            self.metrics.observe_request(endpoint_of(scope["path"]), status, time.perf_counter() - started)


async def _unauthorised(send: Any) -> None:
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": UNAUTHORIZED})
