"""A Python client for mlcomponent services (and any V2 server): sync ``Client``, ``AsyncClient``.

    from mlcomponent.client import Client

    with Client("http://127.0.0.1:8080") as client:
        result = client.infer(inputs={"features": [[5.1, 3.5, 1.4, 0.2]]})
        print(result["label"])                        # numpy array when numpy is installed
        client.download(result.files["predictions"], "out/")   # FILE outputs

Over gRPC (the protocol's ``GRPCInferenceService``): ``Client("grpc://127.0.0.1:8081", "iris")``
or ``transport="grpc"``; the same methods and results. gRPC has no model index (name the model)
and no file transfer: FILE inputs are keys in the file box, and FILE outputs download over
HTTP from ``http_url``.

Inputs are typed from the service's metadata (the docstring spec), so callers give
values, not datatypes or shapes. Retries are safe: only a connection that failed
before the request was sent is retried; a request that may have run is never sent
again unless ``retry_unsafe=True``.

Every argument of ``Client``, ``AsyncClient``, ``infer`` and ``download``, with an example
each: docs/client.md.

Exceptions::

    ClientError                 base; .status and .message from the service
    ├── ServiceUnavailable      could not connect (after the safe retries)
    ├── BadRequestError  (400)
    ├── UnauthorizedError (401)
    ├── NotFoundError    (404)
    ├── PayloadTooLargeError (413)
    ├── InferenceError   (500)  the function failed or returned something malformed
    ├── NotReadyError    (503)  .retry_after
    └── DeadlineExceeded (504)
"""

from __future__ import annotations

import functools
import mimetypes
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from mlcomponent.errors import MLComponentError
from mlcomponent.protocol.plain import as_plain

__all__ = [
    "AsyncClient", "BadRequestError", "Client", "ClientError", "DeadlineExceeded", "FileOutput", "InferenceError",
    "InferenceResult", "NotFoundError", "NotReadyError", "PayloadTooLargeError", "ServiceUnavailable",
    "UnauthorizedError",
]


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context (certificates verified), made once per process: each new one
    loads the CA bundle, 20 ms of CPU per client, which a client made per call would pay per call."""
    return httpx.create_ssl_context()


class ClientError(Exception):
    status: int = 0

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class ServiceUnavailable(ClientError):
    pass


class BadRequestError(ClientError):
    status = 400


class UnauthorizedError(ClientError):
    status = 401


class NotFoundError(ClientError):
    status = 404


class PayloadTooLargeError(ClientError):
    status = 413


class InferenceError(ClientError):
    status = 500


class NotReadyError(ClientError):
    status = 503


class DeadlineExceeded(ClientError):
    status = 504


_BY_STATUS: dict[int, type[ClientError]] = {
    400: BadRequestError, 401: UnauthorizedError, 404: NotFoundError, 413: PayloadTooLargeError,
    500: InferenceError, 503: NotReadyError, 504: DeadlineExceeded,
}


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text or response.reason_phrase
    kind = _BY_STATUS.get(response.status_code, ClientError)
    retry = response.headers.get("retry-after")
    raise kind(f"{response.status_code}: {message}", response.status_code,
               float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


@dataclass(frozen=True)
class FileOutput:
    name: str
    key: str
    url: str
    content_type: str | None = None


@dataclass
class InferenceResult:
    """Outputs by name (numpy arrays when numpy is installed, else nested lists); FILE outputs in ``files``."""

    outputs: dict[str, Any]
    files: dict[str, FileOutput]
    raw: dict[str, Any] = field(repr=False)

    def __getitem__(self, name: str) -> Any:
        if name in self.files:
            return self.files[name]
        return self.outputs[name]

    @property
    def id(self) -> str | None:
        return self.raw.get("id")


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


_NUMPY_TYPES = {"FP32": "float32", "FP64": "float64", "INT32": "int32"}


def _decode_output(output: dict[str, Any]) -> Any:
    data, shape, datatype = output.get("data", []), output.get("shape", []), output.get("datatype")
    try:
        import numpy
    except ImportError:
        return _reshape(data, shape)
    if datatype in _NUMPY_TYPES:
        return numpy.asarray(data, dtype=_NUMPY_TYPES[datatype]).reshape(shape)
    return numpy.asarray(data, dtype=object).reshape(shape)


def parse_result(body: dict[str, Any], http_url: str | None = None) -> InferenceResult:
    """``http_url``: where a FILE output's ``path`` (all a gRPC answer gives) downloads from."""
    outputs, files = {}, {}
    for output in body.get("outputs", []):
        params = output.get("parameters") or {}
        if output.get("datatype") == "FILE":
            key = output["data"][0] if isinstance(output.get("data"), list) else output.get("data")
            url = params.get("url") or (f"{http_url}{params['path']}" if http_url and "path" in params else "")
            files[output["name"]] = FileOutput(output["name"], key, url, params.get("content_type"))
        else:
            outputs[output["name"]] = _decode_output(output)
    return InferenceResult(outputs, files, body)


_DTYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT32", "float16": "FP32"}


def _guess_datatype(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return _DTYPES.get(str(dtype), "BYTES")
    flat = value
    while isinstance(flat, list) and flat:
        flat = flat[0]
    if isinstance(flat, bool) or isinstance(flat, str):
        return "BYTES"
    if isinstance(flat, int):
        return "INT32"
    return "FP32"


def _shape_of(value: Any, declared: list[int] | None) -> list[int]:
    shape = list(getattr(value, "shape", ()))
    if not shape:
        node = value
        while isinstance(node, list):
            shape.append(len(node))
            node = node[0] if node else None
    if not shape:
        shape = [1]
    if declared and len(declared) != len(shape):
        total = 1
        for size in shape:
            total *= size
        known = 1
        for size in declared:
            known *= size if size > 0 else 1
        return [size if size > 0 else max(1, total // known) for size in declared]
    return shape


def build_inputs(values: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """V2 input tensors from plain values, typed by the service's declared inputs where known."""
    declared = {t["name"]: t for t in (metadata or {}).get("inputs", [])}
    tensors = []
    for name, value in values.items():
        spec = declared.get(name, {})
        value = value if isinstance(value, (list, tuple)) or hasattr(value, "shape") else [value]
        value = list(value) if isinstance(value, tuple) else value
        datatype = spec.get("datatype") or _guess_datatype(value)
        shape = _shape_of(value, spec.get("shape"))
        tensors.append({"name": name, "datatype": datatype, "shape": shape, "data": as_plain(value)})
    return tensors


def _check_downloadable(output: FileOutput) -> None:
    if not output.url:
        raise ClientError(f"FILE output {output.name!r} ({output.key}) has no download URL: over gRPC, give "
                          "the service's HTTP address as http_url= (files download over HTTP)")


def _download_target(output: FileOutput, destination: str | Path) -> tuple[Path, Path]:
    """The final path (a folder keeps the output's file name) and the partial file written first."""
    target = Path(destination)
    if target.is_dir() or str(destination).endswith("/"):
        target = target / Path(output.key).name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target, target.with_name(target.name + ".part")


class _Progress:
    """A file wrapper that reports bytes read, for upload progress bars."""

    def __init__(self, stream: IO[bytes], report: Callable[[int], None]) -> None:
        self.stream, self.report = stream, report

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.report(len(chunk))
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk


def _multipart_parts(stack: ExitStack, files: Mapping[str, str | Path],
                     progress: Callable[[int], None] | None) -> dict[str, Any]:
    """One streamed part per FILE input (never read whole into memory)."""
    parts: dict[str, Any] = {}
    for name, file_path in files.items():
        handle: Any = stack.enter_context(Path(file_path).open("rb"))
        if progress is not None:
            handle = _Progress(handle, progress)
        parts[name] = (Path(file_path).name, handle, mimetypes.guess_type(str(file_path))[0]
                       or "application/octet-stream")
    return parts


def _checked(response: httpx.Response) -> httpx.Response:
    _raise_for(response)
    return response


def _sent_and_failed(method: str, url: str, error: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"{method} {url} failed after it was sent: {error} (not retried: it may have run)")


def _grpc_failed(error: Any) -> ClientError:
    """A ``CallFailed`` from the gRPC channel as the same typed error REST raises."""
    if error.status == 0:
        return ServiceUnavailable(error.message)
    return _BY_STATUS.get(error.status, ClientError)(error.message, error.status, error.retry_after)


class _Base:
    def __init__(self, url: str, model: str | None, token: str | None, retries: int, retry_unsafe: bool,
                 transport: str | None, http_url: str | None, timeout: float, channel: str) -> None:
        url = url.rstrip("/")
        self.grpc = transport == "grpc" or url.startswith("grpc://")
        if self.grpc:
            target, _, rest = url.removeprefix("grpc://").partition("/")
            url, model = target, model or rest.split("/")[0] or None
        elif "/v2/models/" in url:
            url, _, rest = url.partition("/v2/models/")
            model = model or rest.split("/")[0]
        self.url = url
        self.http_url = (http_url or "").rstrip("/") or None
        self.model = model
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.retry_unsafe = retry_unsafe
        self._metadata: dict[str, Any] | None = None
        self._grpc: Any = None
        if self.grpc:  # grpcio is imported only by those who use it
            from mlcomponent.grpc import channel as channels

            self._grpc = getattr(channels, channel)(self.url, token, timeout)

    @property
    def _http_base(self) -> str:
        """HTTP calls go to the service; over gRPC only downloads do, to ``http_url``."""
        return (self.http_url or "") if self.grpc else self.url

    def _grpc_model(self) -> str:
        if self.model is None:
            raise ClientError(f"gRPC has no model index: name the model (model=..., or grpc://{self.url}/MODEL)")
        return self.model

    @staticmethod
    def _no_files_over_grpc(files: Mapping[str, str | Path] | None) -> None:
        if files:
            raise ClientError("gRPC carries no files: put them in the file box and send their keys as the "
                              "FILE inputs' values, or call the service over http://")

    @property
    def _attempts(self) -> int:
        """Connections that failed before sending are retried by the transport; a sent request only
        with ``retry_unsafe`` (it may have run)."""
        return 1 + (self.retries if self.retry_unsafe else 0)

    def _retry_or_raise(self, method: str, path: str, attempt: int, error: httpx.TransportError) -> None:
        if isinstance(error, httpx.ConnectError):
            raise ServiceUnavailable(f"cannot connect to {self.url}: {error}") from None
        if attempt + 1 >= self._attempts:
            raise _sent_and_failed(method, self.url + path, error) from None

    def _request_body(self, inputs: Mapping[str, Any] | list[dict[str, Any]] | None, parameters: Mapping[str, Any] | None,
                      outputs: list[str | dict[str, Any]] | None, request_id: str | None, metadata: dict[str, Any] | None,
                      timeout: float | None) -> dict[str, Any]:
        if isinstance(inputs, list):
            tensors = inputs
        else:
            tensors = build_inputs(inputs or {}, metadata)
        body: dict[str, Any] = {"inputs": tensors}
        params = dict(parameters or {})
        if timeout is not None:
            params.setdefault("timeout", max(1, round(timeout * 1_000_000)))  # microseconds, as Triton's clients
        if params:
            body["parameters"] = params
        if outputs:
            declared = {t["name"]: t for t in (metadata or {}).get("outputs", [])}
            body["outputs"] = [
                output if isinstance(output, dict) else
                {"name": output, **({"parameters": {"datatype": "FILE"}}
                                    if declared.get(output, {}).get("datatype") == "FILE" else {})}
                for output in outputs]
        if request_id:
            body["id"] = request_id
        return body


class Client(_Base):
    """Synchronous client. ``retries`` applies only to connections that failed before sending."""

    def __init__(self, url: str, model: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 token: str | None = None, retry_unsafe: bool = False, transport: str | None = None,
                 http_url: str | None = None) -> None:
        super().__init__(url, model, token, retries, retry_unsafe, transport, http_url, timeout, "Channel")
        self._http = httpx.Client(base_url=self._http_base, timeout=timeout, headers=self.headers,
                                  transport=httpx.HTTPTransport(retries=retries, verify=_tls()))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        if self._grpc is not None:
            self._grpc.close()

    def _over_grpc(self, call: Callable[..., Any], *args: Any) -> Any:
        from mlcomponent.grpc.channel import CallFailed

        try:
            return call(self._grpc_model(), *args)
        except CallFailed as error:
            raise _grpc_failed(error) from None
        except MLComponentError as error:
            raise BadRequestError(error.message, 400) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._attempts):
            try:
                return _checked(self._http.request(method, path, **kwargs))
            except httpx.TransportError as error:
                self._retry_or_raise(method, path, attempt, error)
        raise AssertionError("unreachable")

    def _model(self) -> str:
        if self.model is None:
            index = self._send("POST", "/v2/repository/index").json()
            if len(index) != 1:
                raise ClientError(f"{self.url} serves {len(index)} models; name one with model=")
            self.model = index[0]["name"]
        return self.model

    def live(self) -> bool:
        if self._grpc is not None:
            return bool(self._grpc.live())
        try:
            return self._http.get("/v2/health/live").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        try:
            if self._grpc is not None:
                return bool(self._over_grpc(self._grpc.ready))
            return self._http.get(f"/v2/models/{self._model()}/ready").status_code == 200
        except (httpx.TransportError, ClientError):
            return False

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            if self._grpc is not None:
                self._metadata = self._over_grpc(self._grpc.metadata)
            else:
                self._metadata = self._send("GET", f"/v2/models/{self._model()}").json()
        assert self._metadata is not None
        return self._metadata

    def infer(self, inputs: Mapping[str, Any] | list[dict[str, Any]] | None = None, *,
              parameters: Mapping[str, Any] | None = None, files: Mapping[str, str | Path] | None = None,
              outputs: list[str | dict[str, Any]] | None = None, request_id: str | None = None,
              timeout: float | None = None, progress: Callable[[int], None] | None = None) -> InferenceResult:
        """Run inference. ``files`` maps FILE inputs to local paths (sent as multipart).

        ``outputs`` names the outputs wanted (default: the declared ones); an entry may be a
        full V2 output dict, e.g. ``{"name": "report", "parameters": {"datatype": "FILE"}}``.
        ``timeout`` is the service-side deadline (the request's ``timeout`` parameter).
        """
        body = self._request_body(inputs, parameters, outputs, request_id, self.metadata(), timeout)
        if self._grpc is not None:
            self._no_files_over_grpc(files)
            return parse_result(self._over_grpc(self._grpc.infer, body), self.http_url)
        path = f"/v2/models/{self._model()}/infer"
        if not files:
            response = self._send("POST", path, content=orjson.dumps(body),
                                  headers={"Content-Type": "application/json"})
            return parse_result(response.json())
        with ExitStack() as stack:
            parts = _multipart_parts(stack, files, progress)
            response = self._send("POST", path, data={"request": orjson.dumps(body).decode()}, files=parts)
        return parse_result(response.json())

    def download(self, output: FileOutput, destination: str | Path,
                 progress: Callable[[int], None] | None = None) -> Path:
        """Stream a FILE output to ``destination`` (a folder keeps the output's file name)."""
        _check_downloadable(output)
        target, partial = _download_target(output, destination)
        with self._http.stream("GET", output.url) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            with partial.open("wb") as sink:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        partial.replace(target)
        return target


class AsyncClient(_Base):
    """The asyncio twin of ``Client`` (same arguments, awaitable methods)."""

    def __init__(self, url: str, model: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 token: str | None = None, retry_unsafe: bool = False, transport: str | None = None,
                 http_url: str | None = None) -> None:
        super().__init__(url, model, token, retries, retry_unsafe, transport, http_url, timeout, "AsyncChannel")
        self._http = httpx.AsyncClient(base_url=self._http_base, timeout=timeout, headers=self.headers,
                                       transport=httpx.AsyncHTTPTransport(retries=retries, verify=_tls()))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._grpc is not None:
            await self._grpc.close()

    async def _over_grpc(self, call: Callable[..., Any], *args: Any) -> Any:
        from mlcomponent.grpc.channel import CallFailed

        try:
            return await call(self._grpc_model(), *args)
        except CallFailed as error:
            raise _grpc_failed(error) from None
        except MLComponentError as error:
            raise BadRequestError(error.message, 400) from None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._attempts):
            try:
                return _checked(await self._http.request(method, path, **kwargs))
            except httpx.TransportError as error:
                self._retry_or_raise(method, path, attempt, error)
        raise AssertionError("unreachable")

    async def _model(self) -> str:
        if self.model is None:
            index = (await self._send("POST", "/v2/repository/index")).json()
            if len(index) != 1:
                raise ClientError(f"{self.url} serves {len(index)} models; name one with model=")
            self.model = index[0]["name"]
        return self.model

    async def live(self) -> bool:
        if self._grpc is not None:
            return bool(await self._grpc.live())
        try:
            return (await self._http.get("/v2/health/live")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        try:
            if self._grpc is not None:
                return bool(await self._over_grpc(self._grpc.ready))
            return (await self._http.get(f"/v2/models/{await self._model()}/ready")).status_code == 200
        except (httpx.TransportError, ClientError):
            return False

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            if self._grpc is not None:
                self._metadata = await self._over_grpc(self._grpc.metadata)
            else:
                self._metadata = (await self._send("GET", f"/v2/models/{await self._model()}")).json()
        assert self._metadata is not None
        return self._metadata

    async def infer(self, inputs: Mapping[str, Any] | list[dict[str, Any]] | None = None, *,
                    parameters: Mapping[str, Any] | None = None, files: Mapping[str, str | Path] | None = None,
                    outputs: list[str | dict[str, Any]] | None = None, request_id: str | None = None,
                    timeout: float | None = None, progress: Callable[[int], None] | None = None) -> InferenceResult:
        """As ``Client.infer``; files are streamed from disk (reads block briefly, in chunks)."""
        body = self._request_body(inputs, parameters, outputs, request_id, await self.metadata(), timeout)
        if self._grpc is not None:
            self._no_files_over_grpc(files)
            return parse_result(await self._over_grpc(self._grpc.infer, body), self.http_url)
        path = f"/v2/models/{await self._model()}/infer"
        if not files:
            response = await self._send("POST", path, content=orjson.dumps(body),
                                        headers={"Content-Type": "application/json"})
            return parse_result(response.json())
        with ExitStack() as stack:
            parts = _multipart_parts(stack, files, progress)
            response = await self._send("POST", path, data={"request": orjson.dumps(body).decode()}, files=parts)
        return parse_result(response.json())

    async def download(self, output: FileOutput, destination: str | Path,
                       progress: Callable[[int], None] | None = None) -> Path:
        _check_downloadable(output)
        target, partial = _download_target(output, destination)
        async with self._http.stream("GET", output.url) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            with partial.open("wb") as sink:
                async for chunk in response.aiter_bytes():
                    sink.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        partial.replace(target)
        return target
