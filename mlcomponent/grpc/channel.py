"""The client's end of the gRPC transport: ``mlcomponent.client`` talks through these.

Calls take and return the REST JSON shapes (``codec.py`` converts), so the client parses a
gRPC answer exactly as a JSON one. A failed call raises ``CallFailed`` with the HTTP status
the gRPC code stands for (0 when the service could not be reached at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from open_inference.grpc import protocol as pb

from mlcomponent.grpc.codec import CODES, SERVICE, infer_request, metadata_body, response_body

STATUSES = {code: status for status, code in CODES.items()}
OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class CallFailed(Exception):
    def __init__(self, code: str, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.code, self.status, self.message, self.retry_after = code, status, message, retry_after


def _failed(error: grpc.RpcError) -> CallFailed:
    code = error.code()
    trailers = dict(error.trailing_metadata() or ())
    retry = trailers.get("retry-after")
    status = STATUSES.get(code, 0)
    if code == grpc.StatusCode.UNAVAILABLE and retry is None:
        status = 0  # no answer from the service (it did not say "not ready"): connection refused, gone
    return CallFailed(code.name, status, f"{code.name}: {error.details()}", float(retry) if retry else None)


def _method(channel: Any, name: str, response: Any) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=lambda message: message.SerializeToString(),
                               response_deserializer=response.FromString)


class _Stubs:
    def __init__(self, channel: Any) -> None:
        self.live = _method(channel, "ServerLive", pb.ServerLiveResponse)
        self.ready = _method(channel, "ModelReady", pb.ModelReadyResponse)
        self.metadata = _method(channel, "ModelMetadata", pb.ModelMetadataResponse)
        self.infer = _method(channel, "ModelInfer", pb.ModelInferResponse)


def _auth(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class Channel:
    """Blocking calls over one HTTP/2 connection."""

    def __init__(self, target: str, token: str | None, timeout: float) -> None:
        self._channel = grpc.insecure_channel(target, options=OPTIONS)
        self._stubs = _Stubs(self._channel)
        self._metadata = _auth(token)
        self.timeout = timeout

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _failed(error) from None

    def live(self) -> bool:
        try:
            return bool(self._call(self._stubs.live, pb.ServerLiveRequest()).live)
        except CallFailed:
            return False

    def ready(self, model: str) -> bool:
        return bool(self._call(self._stubs.ready, pb.ModelReadyRequest(name=model)).ready)

    def metadata(self, model: str) -> dict[str, Any]:
        return metadata_body(self._call(self._stubs.metadata, pb.ModelMetadataRequest(name=model)))

    def infer(self, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return response_body(self._call(self._stubs.infer, infer_request(model, body)))

    def close(self) -> None:
        self._channel.close()


class AsyncChannel:
    """Awaitable calls; the aio channel is opened on first use, inside the caller's event loop."""

    def __init__(self, target: str, token: str | None, timeout: float) -> None:
        self.target = target
        self._metadata = _auth(token)
        self.timeout = timeout
        self._channel: Any = None
        self._stubs: _Stubs | None = None

    async def _call(self, name: str, request: Any) -> Any:
        if self._stubs is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=OPTIONS)
            self._stubs = _Stubs(self._channel)
        try:
            return await getattr(self._stubs, name)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _failed(error) from None

    async def live(self) -> bool:
        try:
            return bool((await self._call("live", pb.ServerLiveRequest())).live)
        except CallFailed:
            return False

    async def ready(self, model: str) -> bool:
        return bool((await self._call("ready", pb.ModelReadyRequest(name=model))).ready)

    async def metadata(self, model: str) -> dict[str, Any]:
        return metadata_body(await self._call("metadata", pb.ModelMetadataRequest(name=model)))

    async def infer(self, model: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return response_body(await self._call("infer", infer_request(model, body)))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
