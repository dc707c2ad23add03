"""The protocol's ``inference.GRPCInferenceService`` over the data plane, and gRPC health checking.

Every call passes one wrapper (``Calls.wrap``): bearer auth from the ``authorization``
metadata (health and liveness stay open, as on REST), the request id (``x-request-id``
metadata, echoed in the trailers, in every log line), metrics labelled ``transport="grpc"``,
and one error mapping: each error the data plane raises becomes the gRPC status code of its
HTTP status, with the same message REST would send (both from ``serving/``, which decides them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from open_inference.grpc.protocol import (
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)

from mlcomponent.errors import BadRequest
from mlcomponent.grpc.codec import CODES, SERVICE, metadata_message, request_body, response_message
from mlcomponent.metrics import Metrics
from mlcomponent.protocol.types import InferenceResponse
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.serving.auth import Auth
from mlcomponent.serving.errors import describe
from mlcomponent.serving.metadata import model_metadata, server_metadata
from mlcomponent.serving.requests import Requests

UNAUTHENTICATED = "this endpoint needs `authorization: Bearer <token>` metadata; the token was missing or wrong"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_of(error: Exception, method: str, hide_errors: bool = False) -> tuple[grpc.StatusCode, str,
                                                                              tuple[tuple[str, str], ...]]:
    """The gRPC status code, message and extra trailers for any error, from the same ``Failure``
    that REST renders (``serving/errors.py``: it logs 5xx and hides messages under ``--hide-errors``)."""
    failure = describe(error, f"gRPC {method}", hide_errors)
    trailers = (("retry-after", str(failure.retry_after)),) if failure.retry_after is not None else ()
    return CODES.get(failure.status, grpc.StatusCode.UNKNOWN), failure.message, trailers


def _consume(task: asyncio.Future[Any]) -> None:
    """Nobody waits for a call whose RPC was cancelled: read its outcome so asyncio does not complain."""
    if not task.cancelled():
        task.exception()


class Calls:
    """What every RPC shares: ``serving/``'s request wrapper and auth, and errors as status codes."""

    def __init__(self, metrics: Metrics, token: str | None, hide_errors: bool = False) -> None:
        self.metrics = metrics
        self.auth = Auth(token)
        self.hide_errors = hide_errors
        self.requests = Requests(metrics, "grpc", id_tag="g")

    def wrap(self, endpoint: str, method: str, handler: Handler) -> Handler:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            given = authorization = None
            for key, value in context.invocation_metadata() or ():
                if key == "x-request-id":
                    given = value
                elif key == "authorization":
                    authorization = value
            with self.requests.track(endpoint, given, grpc.StatusCode.OK.name) as tracked:
                rid = tracked.id
                if not self.auth.allows(endpoint, authorization):
                    tracked.status = grpc.StatusCode.UNAUTHENTICATED.name
                    context.set_trailing_metadata((("x-request-id", rid), ("www-authenticate", "Bearer")))
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
                context.set_trailing_metadata((("x-request-id", rid),))
                try:
                    return await handler(request, context)
                except asyncio.CancelledError:
                    left = context.time_remaining()
                    tracked.status = (grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0
                                      else grpc.StatusCode.CANCELLED).name
                    raise
                except Exception as error:  # noqa: BLE001 - every error becomes a status; the service goes on
                    code, message, trailers = status_of(error, method, self.hide_errors)
                    tracked.status = code.name
                    context.set_trailing_metadata((("x-request-id", rid), *trailers))
                    await context.abort(code, message)

        return call


class InferenceService:
    """The six RPCs of ``inference.GRPCInferenceService``, each a few lines over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def server_live(self, request: ServerLiveRequest, context: grpc.aio.ServicerContext) -> ServerLiveResponse:
        return ServerLiveResponse(live=True)

    async def server_ready(self, request: ServerReadyRequest, context: grpc.aio.ServicerContext) -> ServerReadyResponse:
        return ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(self, request: ModelReadyRequest, context: grpc.aio.ServicerContext) -> ModelReadyResponse:
        self.plane.check_model(request.name)
        reason = self.plane.not_ready_reason
        if reason is not None:  # the response has no field for it: trailing metadata says why
            context.set_trailing_metadata((("mlcomponent-not-ready-reason", reason),))
        return ModelReadyResponse(ready=self.plane.ready)

    async def server_metadata(self, request: ServerMetadataRequest,
                              context: grpc.aio.ServicerContext) -> ServerMetadataResponse:
        return ServerMetadataResponse(**server_metadata())

    async def model_metadata(self, request: ModelMetadataRequest,
                             context: grpc.aio.ServicerContext) -> ModelMetadataResponse:
        self.plane.check_model(request.name)
        return metadata_message(model_metadata(self.plane.model_name, self.plane.spec))

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> ModelInferResponse:
        """Parsed here (not by grpc) so that a malformed message is INVALID_ARGUMENT with our message."""
        arrived = time.monotonic()
        try:
            message = ModelInferRequest.FromString(raw)
        except DecodeError as error:
            raise BadRequest(f"malformed ModelInferRequest: {error}") from None
        plane = self.plane
        plane.check_model(message.model_name)
        deadline = context.time_remaining()
        if deadline is None:  # only the client going away cancels it: nobody is left to answer
            return response_message(*await self._infer(message, deadline, arrived))
        # grpc cancels the RPC at its deadline, the moment the data plane's own deadline (the same)
        # passes: the call runs on to that, so that a running worker is stopped, not left running.
        task = asyncio.ensure_future(self._infer(message, deadline, arrived))
        try:
            response, raw_answer = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_consume)
            raise
        return response_message(response, raw_answer)

    async def _infer(self, message: ModelInferRequest, deadline: float | None,
                     arrived: float) -> tuple[InferenceResponse, bool]:
        """Admitted (or refused) once, by ``request_scope``, before its tensors are decoded."""
        async with self.plane.request_scope() as files:  # a failed request keeps nothing in the box
            body, raw_answer = request_body(message, deadline)
            return await self.plane.infer(body, files, arrived=arrived), raw_answer

    def handlers(self, calls: Calls) -> dict[str, grpc.RpcMethodHandler]:
        def unary(name: str, endpoint: str, handler: Handler, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                calls.wrap(endpoint, name, handler),
                request_deserializer=request.FromString if request is not None else None,
                response_serializer=response.SerializeToString)

        return {
            "ServerLive": unary("ServerLive", "health", self.server_live, ServerLiveRequest, ServerLiveResponse),
            "ServerReady": unary("ServerReady", "health", self.server_ready, ServerReadyRequest, ServerReadyResponse),
            "ModelReady": unary("ModelReady", "ready", self.model_ready, ModelReadyRequest, ModelReadyResponse),
            "ServerMetadata": unary("ServerMetadata", "server_metadata", self.server_metadata,
                                    ServerMetadataRequest, ServerMetadataResponse),
            "ModelMetadata": unary("ModelMetadata", "model_metadata", self.model_metadata, ModelMetadataRequest,
                                   ModelMetadataResponse),
            "ModelInfer": unary("ModelInfer", "infer", self.model_infer, None, ModelInferResponse),
        }


class Health(HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health``: SERVING while the model is ready, for "" and the inference service.

    ``Check`` reads readiness when asked (Kubernetes' gRPC probes); ``Watch`` streams the
    changes that ``follow`` sees.
    """

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane
        self._server_status[SERVICE] = health_pb2.HealthCheckResponse.NOT_SERVING

    async def refresh(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.plane.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE):
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self.refresh()
        return await super().Check(request, context)

    async def follow(self, interval: float = 0.5) -> None:
        """Keep the statuses that ``Watch`` streams current (until cancelled)."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)
