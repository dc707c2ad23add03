"""How every HTTP answer is rendered: one error renderer, one result encoder, one URL builder.

Pure ASGI helpers (no Starlette request objects), shared by the infer endpoint and
the Starlette routes, so an error looks and is logged the same wherever it happens.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import Scope, Send

from mlcomponent.protocol import binary
from mlcomponent.protocol.response import encode_response
from mlcomponent.protocol.types import InferenceResponse
from mlcomponent.serving.errors import describe

Headers = list[tuple[bytes, bytes]]
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
HIDE_ERRORS = "mlcomponent.hide_errors"  # set in the scope by the gateway under ``serve --hide-errors``


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def error_payload(error: Exception, scope: Scope) -> tuple[int, bytes, Headers]:
    """Status, ``{"error": ...}`` body and headers (Retry-After on 503, Allow on 405) for any error;
    ``serving/errors.py`` decides status and message (and logs 5xx)."""
    failure = describe(error, f"{scope.get('method', '')} {scope.get('path', '')}", bool(scope.get(HIDE_ERRORS)))
    headers = list(JSON_HEADERS)
    if failure.retry_after is not None:
        headers.append((b"retry-after", str(failure.retry_after).encode()))
    if failure.allow:
        headers.append((b"allow", failure.allow.encode()))
    return failure.status, orjson.dumps({"error": failure.message}), headers


def file_url(scope: Scope, model_name: str) -> Callable[[str], str]:
    """The download URL of a key in the file box, as this client reached us."""
    def url(key: str) -> str:
        host = (header(scope, b"host") or b"localhost").decode("latin-1")
        return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}/v2/models/{model_name}/files/{key}"

    return url


def result_payload(response: InferenceResponse, scope: Scope) -> tuple[bytes, Headers]:
    """The response body and headers: JSON, or JSON + binary tensors when the client asked for them."""
    body = encode_response(response, file_url(scope, response.model_name))
    encoded = binary.encode(body, response.request.wants_binary)
    if encoded is not None:
        parts, length = encoded
        return b"".join(parts), [(b"content-type", b"application/octet-stream"),
                                 (b"inference-header-content-length", b"%d" % length)]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), list(JSON_HEADERS)  # see binary.encode


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
