"""``create_app``: the HTTP transport over one service — gateway, route table, error handlers, lifespan."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from mlcomponent.errors import MethodNotAllowed, MLComponentError, NotFound
from mlcomponent.http.budget import MemoryBudget, default_budget
from mlcomponent.http.gateway import Gateway
from mlcomponent.http.infer import InferEndpoint
from mlcomponent.http.responses import error_payload
from mlcomponent.http.routes import Endpoints, routes
from mlcomponent.http.server import on_terminate
from mlcomponent.metrics import Metrics
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.runtime.service import Service


async def _render_error(request: Request, exc: Exception) -> Response:
    """Every error a route raises, rendered and logged by the one renderer."""
    status_code = getattr(exc, "status_code", None)
    if status_code == 404:
        exc = NotFound(f"no route {request.method} {request.url.path}")
    elif status_code == 405:
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        exc = MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}"
                               f"{f'; use {allow}' if allow else ''}", allow=allow)
    status, body, headers = error_payload(exc, request.scope)
    response = Response(body, status)
    response.raw_headers = [(b"content-length", b"%d" % len(body)), *headers]
    return response


class Transport(Protocol):
    """Another transport over the same service (gRPC), started and stopped with this app."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


async def publish_queue(plane: DataPlane, metrics: Metrics, every: float = 1.0) -> None:
    """With several workers a scrape reaches one of them: each publishes its own queue (summed: livesum)."""
    while True:
        metrics.queued.set(plane.queued)
        await asyncio.sleep(every)


def create_app(service: Service, metrics: Metrics, transports: Sequence[Transport] = ()) -> Gateway:
    plane = service.dataplane
    options = service.settings.options
    budget = MemoryBudget(options.memory_budget_bytes or default_budget(service.settings.memory_limit))
    infer = InferEndpoint(plane, options.max_json_body_bytes, options.max_upload_bytes, budget)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if threading.current_thread() is threading.main_thread():
            on_terminate(service.on_terminate)
        await service.start()
        started: list[Transport] = []
        publisher = asyncio.create_task(publish_queue(plane, metrics)) if metrics.multiprocess else None
        try:
            for transport in transports:
                await transport.start()
                started.append(transport)
            yield
        finally:
            if publisher is not None:
                publisher.cancel()
            for transport in started:  # HTTP has drained by now; let the other transports drain too
                await transport.stop(options.grace_period)
            await service.stop()

    app = Starlette(routes=routes(Endpoints(plane, metrics), infer), lifespan=lifespan,
                    exception_handlers={404: _render_error, 405: _render_error, MLComponentError: _render_error,
                                        Exception: _render_error})
    return Gateway(app, infer, metrics, service.settings.auth_token(), hide_errors=options.hide_errors)
