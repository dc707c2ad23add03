"""The outermost ASGI app: request id, bearer auth, metrics, and the infer fast path.

Every request passes here. ``POST .../infer`` with a JSON or binary body (the hot
path) is served directly, without Starlette's routing and middleware stack; everything
else (multipart infer, metadata, files, metrics, the playground) goes to Starlette.
Pure ASGI because it is the hot path: bench numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlcomponent.errors import BadRequest, MLComponentError, NotReady, PayloadTooLarge
from mlcomponent.http.metrics import Metrics, endpoint_of
from mlcomponent.logs import request_id
from mlcomponent.protocol import binary
from mlcomponent.protocol.request import InferenceCall
from mlcomponent.runtime.dataplane import DataPlane

log = logging.getLogger("mlcomponent.http")
OPEN_PREFIXES = ("/v2/health/", "/metrics")
UNAUTHORIZED = b'{"error":"this endpoint needs `Authorization: Bearer <token>`; the token was missing or wrong"}'
JSON_HEADERS = [(b"content-type", b"application/json")]
_PREFIX = f"{os.getpid():x}-{os.urandom(3).hex()}-".encode()


def error_payload(error: MLComponentError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, ``{"error": ...}`` body and headers (Retry-After on 503) for any of our errors."""
    headers = list(JSON_HEADERS)
    if isinstance(error, NotReady) and error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    return error.status, orjson.dumps({"error": error.message}), headers


def result_payload(result: dict[str, Any], call: InferenceCall) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and headers: JSON, or JSON + binary tensors when the client asked for them."""
    if call.binary_outputs or call.binary_all:
        encoded = binary.encode(result, call.binary_outputs, call.binary_all)
        if encoded is not None:
            parts, length = encoded
            return b"".join(parts), [(b"content-type", b"application/octet-stream"),
                                     (b"inference-header-content-length", b"%d" % length)]
    return orjson.dumps(result), list(JSON_HEADERS)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the {limit} byte limit (--max-json-body); "
                           "send large tensors in binary or files as multipart")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _model_of_infer_path(path: str) -> str | None:
    """The model name of `/v2/models/{name}[/versions/{v}]/infer`, else None."""
    if not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path[len("/v2/models/"):-len("/infer")].split("/")
    if len(parts) == 1 or (len(parts) == 3 and parts[1] == "versions"):
        return parts[0]
    return None


class Gateway:
    def __init__(self, app: ASGIApp, plane: DataPlane, metrics: Metrics, token: str | None,
                 max_json_body: int) -> None:
        self.app = app
        self.plane = plane
        self.metrics = metrics
        self.token = token.encode() if token else None
        self.max_json_body = max_json_body
        self._ids = itertools.count()

    def _authorised(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if self.token is None or path.startswith(OPEN_PREFIXES) or path == "/":
            return True
        given = _header(scope, b"authorization") or b""
        return given.startswith(b"Bearer ") and hmac.compare_digest(given[7:].strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope["mlcomponent.arrived"] = time.monotonic()
        rid = _header(scope, b"x-request-id") or _PREFIX + b"%x" % next(self._ids)
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
            path: str = scope["path"]
            if not self._authorised(scope):
                await _respond(send_with_id, 401, UNAUTHORIZED, [*JSON_HEADERS, (b"www-authenticate", b"Bearer")])
            elif scope["method"] == "POST" and (name := _model_of_infer_path(path)) is not None and \
                    not (_header(scope, b"content-type") or b"").startswith(b"multipart/"):
                await self._infer(name, scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            request_id.reset(reset)
            self.metrics.observe_request(endpoint_of(scope["path"]), status, time.perf_counter() - started)

    async def _infer(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        plane = self.plane
        files = None
        try:
            plane.check_model(name)
            plane.admit()
            raw = await _read(receive, scope, self.max_json_body)
            header = _header(scope, binary.HEADER.encode())
            if header is not None:
                body = binary.decode(raw, header.decode("latin-1"))
            elif not raw.strip():
                raise BadRequest("the request body is empty; send a JSON object with `inputs`")
            else:
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError as error:
                    raise BadRequest(f"malformed JSON: {error}") from None
            files = plane.request_files(_url_maker(scope, name))
            result, call = await plane.infer(body, files, arrived=scope["mlcomponent.arrived"])
        except MLComponentError as error:
            if error.status >= 500:
                log.error("POST %s -> %s: %s", scope["path"], error.status, error.message)
            await _respond(send, *error_payload(error))
            return
        except Exception as error:  # noqa: BLE001 - the service never dies on a request
            log.exception("unexpected error on POST %s", scope["path"])
            await _respond(send, 500, orjson.dumps({"error": f"internal error: {type(error).__name__}: {error}"}),
                           JSON_HEADERS)
            return
        finally:
            if files is not None:
                files.cleanup()
        await _respond(send, 200, *result_payload(result, call))


async def _read(receive: Receive, scope: Scope, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _url_maker(scope: Scope, name: str) -> Any:
    def url_for(key: str) -> str:
        host = (_header(scope, b"host") or b"localhost").decode("latin-1")
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}/v2/models/{name}/files/{key}"

    return url_for


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
