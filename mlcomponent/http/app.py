"""The HTTP transport: one route table over the data plane, one error handler.

Open Inference Protocol (KServe V2) REST endpoints with the binary tensor extension,
plus file downloads, metrics, the playground page and an OpenAPI description.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mlcomponent import __version__
from mlcomponent.boxes.base import check_key
from mlcomponent.errors import BadRequest, MLComponentError, NotFound
from mlcomponent.http.asgi import Gateway, error_payload, result_payload
from mlcomponent.http.metadata import model_metadata
from mlcomponent.http.metrics import CONTENT_TYPE, Metrics
from mlcomponent.http.multipart import is_multipart, read_multipart
from mlcomponent.http.openapi import openapi_document
from mlcomponent.http.server import on_terminate
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.runtime.files import KEY_ROOT
from mlcomponent.runtime.service import Service

log = logging.getLogger("mlcomponent.http")
JSON = "application/json"
EXTENSIONS = ["binary_tensor_data", "file_datatype", "str_datatype", "multipart_files"]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=JSON)


def _response(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> Response:
    response = Response(body, status)
    response.raw_headers = [(b"content-length", b"%d" % len(body)), *headers]
    return response


def error_response(error: MLComponentError) -> Response:
    return _response(*error_payload(error))


def create_app(service: Service) -> Gateway:
    plane: DataPlane = service.dataplane
    options = service.settings.options
    metrics = Metrics()
    plane.observe = metrics.event  # the runner reports through the data plane too

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        return json_response({"ready": plane.ready}, 200 if plane.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "mlcomponent", "version": __version__, "extensions": EXTENSIONS})

    async def metadata(request: Request) -> Response:
        plane.check_model(request.path_params["name"])
        return json_response(model_metadata(plane.model_name, plane.spec))

    async def model_ready(request: Request) -> Response:
        plane.check_model(request.path_params["name"])
        return json_response({"name": plane.model_name, "ready": plane.ready}, 200 if plane.ready else 503)

    async def infer_multipart(request: Request) -> Response:
        """Multipart infer (JSON and binary bodies take the gateway's fast path)."""
        if not is_multipart(request):
            raise BadRequest("send the request as JSON, binary (Inference-Header-Content-Length), "
                             "or multipart/form-data")
        plane.check_model(request.path_params["name"])
        plane.admit()

        def url_for(key: str) -> str:
            return str(request.url_for("file", name=plane.model_name, key=key))

        files = plane.request_files(url_for)
        try:
            body = await read_multipart(request, files, options.max_json_body, options.max_upload)
            result, call = await plane.infer(body, files, arrived=request.scope.get("mlcomponent.arrived"))
        finally:
            files.cleanup()
        return _response(200, *result_payload(result, call))

    async def download(request: Request) -> Response:
        plane.check_model(request.path_params["name"])
        key = check_key(request.path_params["key"])
        if not key.startswith(f"{KEY_ROOT}/{plane.model_name}/"):
            raise NotFound(f"no file {key!r}: only files this service wrote can be downloaded here")
        info = plane.file_box.stat(key)
        if info is None:
            raise NotFound(f"no file {key!r} in the file box")
        media = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return StreamingResponse(plane.file_box.read_chunks(key), media_type=media,
                                 headers={"Content-Length": str(info.size)})

    async def repository_index(request: Request) -> Response:
        return json_response([{"name": plane.model_name, "version": "",
                               "state": "READY" if plane.ready else "UNAVAILABLE"}])

    async def prometheus(request: Request) -> Response:
        metrics.queued.set(plane.runner.waiting)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    openapi = openapi_document(plane.model_name)

    async def docs(request: Request) -> Response:
        return json_response(openapi)

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response({"error": f"no route {request.method} {request.url.path}"}, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return json_response({"error": f"method {request.method} is not allowed on {request.url.path}"}, 405)

    async def mlcomponent_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MLComponentError)
        if exc.status >= 500:
            log.error("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route(model, metadata),
        Route(version, metadata),
        Route(model + "/ready", model_ready),
        Route(version + "/ready", model_ready),
        Route(model + "/infer", infer_multipart, methods=["POST"]),
        Route(version + "/infer", infer_multipart, methods=["POST"]),
        Route(model + "/files/{key:path}", download, name="file"),
        Route("/v2/repository/index", repository_index, methods=["POST", "GET"]),
        Route("/metrics", prometheus),
        Route("/docs", docs),
        Route("/openapi.json", docs),
        *service.extra_routes(),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if threading.current_thread() is threading.main_thread():
            on_terminate(service.stopping)
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            404: not_found,
            405: method_not_allowed,
            MLComponentError: mlcomponent_error,
            Exception: unexpected,
        },
    )
    return Gateway(app, plane, metrics, service.settings.auth_token(), options.max_json_body)
