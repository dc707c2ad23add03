"""The one infer endpoint: ``POST /v2/models/{name}[/versions/{v}]/infer`` in any encoding.

A pure ASGI app (the hot path: no request objects). It reads the body as JSON, as
JSON + binary tensors (``Inference-Header-Content-Length``) or as multipart (files
streamed into the request folder) inside the data plane's ``request_scope`` (a failed
request's uploads and outputs leave the file box too; the folder is removed) and only
then answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from mlcomponent.errors import BadRequest, PayloadTooLarge
from mlcomponent.http.budget import BINARY_EXPANSION, JSON_EXPANSION, Hold, MemoryBudget
from mlcomponent.http.multipart import is_multipart, read_multipart
from mlcomponent.http.responses import error_payload, header, respond, result_payload
from mlcomponent.protocol import binary
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.runtime.files import RequestFiles

PREFIX = "/v2/models/"
SUFFIX = "/infer"


def model_of_infer_path(path: str) -> str | None:
    """The model name of ``/v2/models/{name}[/versions/{v}]/infer``, else None."""
    if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    parts = path[len(PREFIX):-len(SUFFIX)].split("/")
    if len(parts) == 1 or (len(parts) == 3 and parts[1] == "versions"):
        return parts[0]
    return None


class InferEndpoint:
    def __init__(self, plane: DataPlane, max_json_body: int, max_upload: int,
                 budget: MemoryBudget | None = None) -> None:
        self.plane = plane
        self.max_json_body = max_json_body
        self.max_upload = max_upload
        self.budget = budget or MemoryBudget(1 << 62)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hold = self.budget.hold()
        try:
            await self._answer(scope, receive, send, hold)
        finally:
            hold.release()

    async def _answer(self, scope: Scope, receive: Receive, send: Send, hold: Hold) -> None:
        plane = self.plane
        try:
            plane.check_model(model_of_infer_path(scope["path"]) or "")
            async with plane.request_scope() as files:  # admitted (or 503); a failure keeps nothing in the box
                body = await self._read_body(scope, receive, files, hold)
                response = await plane.infer(body, files, arrived=scope.get("mlcomponent.arrived"))
                del body  # the decoded request holds what it needs
                payload, headers = result_payload(response, scope)
                hold.count(len(payload))  # held until written (or --write-timeout frees it)
            status = 200
        except Exception as error:  # noqa: BLE001 - the service never dies on a request
            status, payload, headers = error_payload(error, scope)
        await respond(send, status, payload, headers)

    async def _read_body(self, scope: Scope, receive: Receive, files: RequestFiles, hold: Hold) -> Any:
        """The V2 body as JSON values, whichever of the three encodings it came in."""
        content_type = header(scope, b"content-type") or b""
        if is_multipart(content_type):  # files go to disk; the `request` part is counted once read
            body = await read_multipart(content_type, _chunks(receive), files, self.max_json_body, self.max_upload,
                                        self.plane.limits.max_inputs, hold=hold)
            return body
        length = header(scope, binary.HEADER.encode())
        raw = await read_body(receive, scope, self.max_json_body, hold,
                              JSON_EXPANSION if length is None else BINARY_EXPANSION)
        if length is not None:
            return binary.decode(raw, length.decode("latin-1"))
        if not raw.strip():
            raise BadRequest("the request body is empty; send a JSON object with `inputs`")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise BadRequest(f"malformed JSON: {error}") from None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the {limit} byte limit (--max-json-body); "
                           "send large tensors in binary or files as multipart")


async def read_body(receive: Receive, scope: Scope, limit: int, hold: Hold | None = None,
                    expansion: int = 1) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` (declared or streamed).

    ``hold`` is charged ``expansion`` times the body's size (the declared length at once,
    else as it arrives), so a body the memory budget cannot take is refused before it is read.
    """
    declared = header(scope, b"content-length")
    known = declared is not None and declared.isdigit() and len(declared) < 19
    if known and int(declared or b"0") > limit:
        raise _too_large(limit)
    if hold is not None and known:
        hold.take(int(declared or b"0") * expansion)
    message = await receive()
    _check_connected(message)
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        _check_connected(message)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if hold is not None and not known:
            hold.take(len(chunk) * expansion)
        chunks.append(chunk)
    joined = b"".join(chunks)
    chunks.clear()  # the pieces go now, not when the request ends
    return joined


def _check_connected(message: Any) -> None:
    """A disconnect is never the end of the body: a truncated body is not processed."""
    if message["type"] == "http.disconnect":
        raise BadRequest("the client disconnected before the body was complete")


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        _check_connected(message)
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
