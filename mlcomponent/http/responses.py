"""How every HTTP answer is rendered: one error renderer, one result encoder, one URL builder.

Pure ASGI helpers (no Starlette request objects), shared by the infer endpoint and
the Starlette routes, so an error looks and is logged the same wherever it happens.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import orjson
from starlette.types import Scope, Send

from mlcomponent.errors import (
    BadFunctionOutput,
    DiskFull,
    FunctionFailed,
    MethodNotAllowed,
    MLComponentError,
    NotReady,
)
from mlcomponent.logs import request_id
from mlcomponent.protocol import binary
from mlcomponent.protocol.response import encode_response
from mlcomponent.protocol.types import InferenceResponse

log = logging.getLogger("mlcomponent.http")
Headers = list[tuple[bytes, bytes]]
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
HIDE_ERRORS = "mlcomponent.hide_errors"  # set in the scope by the gateway under ``serve --hide-errors``
MAX_MESSAGE = 2000  # characters; the values a message echoes are cut shorter still (errors.shown)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def hidden_message(error: Exception) -> str | None:
    """Under ``--hide-errors``: what a 500 tells the client instead of its message (None: shown as it is).

    The function's own words (an exception's message, a malformed output) stay in the
    log; the client gets the exception's type and the request id to quote.
    """
    if isinstance(error, FunctionFailed):
        what = f"inference raised {error.exception_type}"
    elif isinstance(error, BadFunctionOutput):
        what = "inference returned a malformed output"
    elif not isinstance(error, MLComponentError):
        what = f"internal error ({type(error).__name__})"
    else:
        return None  # our own messages (a worker that died, the memory limit) carry nothing of the module's
    return f"{what}; the details are in the service's log under request id {request_id.get() or '-'}"


def disk_full(error: Exception) -> DiskFull | None:
    """A full disk (or file-size limit) where request files are written, as a 507 that names no path."""
    if isinstance(error, OSError) and error.errno in FULL:
        return DiskFull("the service has no disk space left for this request's files; retry later, or send "
                        "smaller files")
    return None


def error_payload(error: Exception, scope: Scope) -> tuple[int, bytes, Headers]:
    """Status, ``{"error": ...}`` body and headers (Retry-After on 503) for any error; 5xx are logged.

    An unexpected error's own text (often a server path) goes to the log only.
    """
    where = f"{scope.get('method', '')} {scope.get('path', '')}"
    if not isinstance(error, MLComponentError):
        full = disk_full(error)
        if full is None:
            log.error("unexpected error on %s", where, exc_info=error)
            message = (f"internal error ({type(error).__name__}); the details are in the service's log under "
                       f"request id {request_id.get() or '-'}")
            return 500, orjson.dumps({"error": message}), list(JSON_HEADERS)
        log.error("%s -> 507: %s", where, error)
        error = full
    hidden = hidden_message(error) if scope.get(HIDE_ERRORS) else None
    if error.status >= 500:
        log.error("%s -> %s: %s", where, error.status, error.message)
    if hidden is not None:
        return error.status, orjson.dumps({"error": hidden}), list(JSON_HEADERS)
    headers = list(JSON_HEADERS)
    if isinstance(error, NotReady) and error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if isinstance(error, MethodNotAllowed) and error.allow:
        headers.append((b"allow", error.allow.encode()))
    message = error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "…"
    return error.status, orjson.dumps({"error": message}), headers


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
    return orjson.dumps(body), list(JSON_HEADERS)


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
