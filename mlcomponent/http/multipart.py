"""Stream a ``multipart/form-data`` inference request: JSON in memory, files to disk.

The ``request`` part holds the V2 JSON; every other part is a file for the FILE
input of the same name, written straight into the request folder (never buffered
whole, never outside the folder), with 413 as soon as a limit is passed.

The parser and the file writes it drives run in a thread, a chunk at a time: a slow
disk delays this upload, never the event loop (health probes, other clients).
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import orjson
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from mlcomponent.errors import BadRequest, PayloadTooLarge, shown
from mlcomponent.http.budget import JSON_EXPANSION, Hold
from mlcomponent.options import DEFAULTS
from mlcomponent.runtime.files import RequestFiles

MAX_BOUNDARY = 256  # bytes; RFC 2046 allows 70, and the parser refuses more than 256


def is_multipart(content_type: bytes) -> bool:
    return content_type.lower().startswith(b"multipart/form-data")


class _Reader:
    def __init__(self, files: RequestFiles, max_json: int, max_upload: int, max_parts: int) -> None:
        self.files = files
        self.max_json = max_json
        self.max_upload = max_upload
        self.max_parts = max_parts
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.name: str | None = None
        self.sink: BinaryIO | None = None
        self.json = bytearray()
        self.saw_request = False
        self.file_bytes = 0

    def on_part_begin(self) -> None:
        self.headers = {}
        self.name = None
        self.sink = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        raw_name = options.get(b"name")
        if raw_name is None:
            raise BadRequest("multipart: a part has no name in its Content-Disposition")
        self.name = raw_name.decode("utf-8", "replace")
        if self.name == "request":
            self.saw_request = True
            return
        if len(self.files.uploaded) >= self.max_parts:
            raise BadRequest(f"multipart: more than {self.max_parts} file parts (--max-inputs)")
        filename = options.get(b"filename")
        target = self.files.upload_target(self.name, filename.decode("utf-8", "replace") if filename else None)
        content_type = self.headers.get(b"content-type", b"").decode("latin-1") or None
        if content_type in (None, "application/octet-stream"):  # curl's default: trust the file name more
            content_type = mimetypes.guess_type(target.name)[0] or content_type
        self.files.uploaded[self.name] = (target, content_type)
        self.sink = target.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.sink is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.max_upload:
                raise PayloadTooLarge(f"uploaded files are over the {self.max_upload} byte limit (--max-upload)")
            self.sink.write(data[start:end])
        elif self.name == "request":
            self.json += data[start:end]
            if len(self.json) > self.max_json:
                raise PayloadTooLarge(f"the `request` part is over the {self.max_json} byte limit (--max-json-body)")

    def on_part_end(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.files.bytes_in += self.file_bytes
            self.sink = None

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


async def read_multipart(content_type: bytes, chunks: AsyncIterator[bytes], files: RequestFiles,
                         max_json: int, max_upload: int, max_parts: int = DEFAULTS.max_inputs,
                         hold: Hold | None = None) -> dict[str, Any]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    if len(boundary) > MAX_BOUNDARY:
        raise BadRequest(f"the multipart boundary is {len(boundary)} bytes long, over the limit of {MAX_BOUNDARY} "
                         "(RFC 2046 allows 70); use a shorter one")
    reader = _Reader(files, max_json, max_upload, max_parts)
    callbacks: Any = {name: getattr(reader, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in chunks:
            await asyncio.to_thread(parser.write, chunk)  # it opens and writes the part files
        await asyncio.to_thread(parser.finalize)
        if parser.state != MultipartState.END:
            raise BadRequest("malformed multipart body: it ends before its closing boundary (truncated?)")
    except (BadRequest, PayloadTooLarge, OSError):
        raise  # an OSError (a full disk: 507) is the server's trouble, not a malformed body
    except Exception as error:  # the parser's own errors: malformed multipart
        raise BadRequest(f"malformed multipart body: {shown(str(error), 200)}") from None
    finally:
        await asyncio.to_thread(reader.close)
    if hold is not None:
        hold.take(len(reader.json) * JSON_EXPANSION)
    body = _request_json(bytes(reader.json)) if reader.saw_request else {"inputs": []}
    merged: dict[str, Any] = _merge_uploads(body, files)
    return merged


def _request_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw.strip() else {"inputs": []}
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"multipart `request` part: malformed JSON: {error}") from None


def _merge_uploads(body: Any, files: RequestFiles) -> Any:
    """Every uploaded part is a FILE input; add those the JSON does not mention."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs", []), list):
        return body
    inputs = body.setdefault("inputs", [])
    named = {item.get("name") for item in inputs if isinstance(item, dict) and isinstance(item.get("name"), str)}
    for name in files.uploaded:
        if name not in named:
            inputs.append({"name": name, "datatype": "FILE", "shape": [1]})
    for item in inputs:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"] in files.uploaded:
            if item.get("datatype") not in (None, "FILE"):
                raise BadRequest(f"input {shown(item['name'])} has a file part but datatype {shown(item['datatype'])}; "
                                 "file parts are for FILE inputs")
            item.setdefault("datatype", "FILE")
            item["data"] = None
            part_type = files.uploaded[item["name"]][1]
            params = item.get("parameters")
            declared = item.get("content_type") or (params.get("content_type") if isinstance(params, dict) else None)
            if not declared and part_type:
                item["content_type"] = part_type
    return body
