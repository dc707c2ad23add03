"""The REST route table over the data plane: health, metadata, infer, files, metrics, docs.

Open Inference Protocol (KServe V2) endpoints plus file downloads, metrics, the
playground page and an OpenAPI description. Each handler is a few lines; the infer
endpoint lives in ``http/infer.py``.
"""

from __future__ import annotations

import asyncio
import mimetypes
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from mlcomponent.boxes.base import check_key
from mlcomponent.errors import NotFound, shown
from mlcomponent.http.infer import InferEndpoint
from mlcomponent.http.openapi import openapi_document
from mlcomponent.http.playground import playground_route
from mlcomponent.metrics import CONTENT_TYPE, Metrics
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.runtime.files import KEY_ROOT, safe_filename
from mlcomponent.serving.metadata import model_metadata, server_metadata

# Served inline; anything else (text/html, SVG, XML: a page that would run in this service's
# origin) is an attachment, and no browser may guess another type (nosniff).
INLINE_TYPES = frozenset({"text/plain", "text/csv", "application/json", "application/octet-stream", "image/png",
                          "image/jpeg", "image/gif", "image/webp", "audio/mpeg", "audio/wav", "audio/x-wav",
                          "video/mp4", "application/pdf"})


def download_headers(key: str, media: str, size: int) -> dict[str, str]:
    headers = {"Content-Length": str(size), "X-Content-Type-Options": "nosniff"}
    if media.split(";")[0].strip().lower() not in INLINE_TYPES:
        name = safe_filename(key.rsplit("/", 1)[-1], "download")
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return headers


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


class Endpoints:
    """The non-infer handlers, each bound to one data plane."""

    def __init__(self, plane: DataPlane, metrics: Metrics) -> None:
        self.plane = plane
        self.metrics = metrics
        self.openapi = openapi_document(plane.model_name)

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        return json_response(self._readiness({"ready": self.plane.ready}), 200 if self.plane.ready else 503)

    def _readiness(self, body: dict[str, Any]) -> dict[str, Any]:
        """Not ready: the body says why, in one line (a failed warm-up's exception and line)."""
        reason = self.plane.not_ready_reason
        return body if reason is None else {**body, "reason": reason}

    async def server_metadata(self, request: Request) -> Response:
        return json_response(server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        self.plane.check_model(request.path_params["name"])
        body = model_metadata(self.plane.model_name, self.plane.spec)
        reason = self.plane.not_ready_reason
        if reason is not None:
            body["parameters"].update(ready=False, reason=reason)
        return json_response(body)

    async def model_ready(self, request: Request) -> Response:
        plane = self.plane
        plane.check_model(request.path_params["name"])
        return json_response(self._readiness({"name": plane.model_name, "ready": plane.ready}),
                             200 if plane.ready else 503)

    async def download(self, request: Request) -> Response:
        plane = self.plane
        plane.check_model(request.path_params["name"])
        key = check_key(request.path_params["key"])
        keys = plane.file_keys
        if not (keys.servable(key) if keys else key.startswith(f"{KEY_ROOT}/{plane.model_name}/outputs/")):
            raise NotFound(f"no file {shown(key)}: only outputs this service wrote can be downloaded here")
        info = await asyncio.to_thread(plane.file_box.stat, key)  # S3's head_object: never on the event loop
        if info is None:
            raise NotFound(f"no file {shown(key)} in the file box")
        media = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return StreamingResponse(plane.file_box.read_chunks(key), media_type=media,
                                 headers=download_headers(key, media, info.size))

    async def repository_index(self, request: Request) -> Response:
        plane = self.plane
        return json_response([{"name": plane.model_name, "version": "",
                               "state": "READY" if plane.ready else "UNAVAILABLE"}])

    async def prometheus(self, request: Request) -> Response:
        self.metrics.queued.set(self.plane.queued)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def docs(self, request: Request) -> Response:
        return json_response(self.openapi)


def routes(endpoints: Endpoints, infer: InferEndpoint) -> list[BaseRoute]:
    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2/health/live", endpoints.live),
        Route("/v2/health/ready", endpoints.ready),
        Route("/v2", endpoints.server_metadata),
        Route("/v2/", endpoints.server_metadata),  # the protocol's own OpenAPI document spells it so
        Route(model, endpoints.model_metadata),
        Route(version, endpoints.model_metadata),
        Route(model + "/ready", endpoints.model_ready),
        Route(version + "/ready", endpoints.model_ready),
        Route(model + "/infer", infer, methods=["POST"]),  # the gateway calls it directly; listed for 405s
        Route(version + "/infer", infer, methods=["POST"]),
        Route(model + "/files/{key:path}", endpoints.download),
        Route("/v2/repository/index", endpoints.repository_index, methods=["POST", "GET"]),
        Route("/metrics", endpoints.prometheus),
        Route("/docs", endpoints.docs),
        Route("/openapi.json", endpoints.docs),
        playground_route(endpoints.plane.model_name),
    ]
