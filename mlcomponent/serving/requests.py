"""The request wrapper both transports use: the request id (taken from the client or minted),
the in-flight gauge, the request counter and latency histogram, and the id in every log line."""

from __future__ import annotations

import contextvars
import itertools
import os
import time

from mlcomponent.logs import request_id
from mlcomponent.metrics import Metrics

_PREFIX = f"{os.getpid():x}-{os.urandom(3).hex()}-"


class Tracked:
    """One request while it runs: its id, and the status the transport sets before it ends. A context
    manager (``Requests.track``): in flight, with its id in the log lines, until it exits, and then
    observed with the status the transport left in ``status``. A class, not a generator: every
    request passes here, and a generator-based context manager costs a microsecond more."""

    __slots__ = ("id", "status", "requests", "endpoint", "started", "reset")

    def __init__(self, requests: Requests, endpoint: str, given_id: str | None, status: int | str) -> None:
        self.requests = requests
        self.endpoint = endpoint
        self.id = given_id or requests.new_id()
        self.status = status
        self.started = 0.0
        self.reset: contextvars.Token[str | None] | None = None

    def __enter__(self) -> Tracked:
        self.started = time.perf_counter()
        self.reset = request_id.set(self.id)
        self.requests.metrics.in_flight.inc()
        return self

    def __exit__(self, *exc: object) -> None:
        requests = self.requests
        metrics = requests.metrics
        metrics.in_flight.dec()
        if self.reset is not None:
            request_id.reset(self.reset)
        metrics.observe_request(self.endpoint, self.status, time.perf_counter() - self.started, requests.transport)


class Requests:
    """One transport's requests in one process (``transport``: the metrics' label, ``http`` or ``grpc``)."""

    def __init__(self, metrics: Metrics, transport: str, id_tag: str = "") -> None:
        self.metrics = metrics
        self.transport = transport
        self._prefix = _PREFIX + id_tag
        self._ids = itertools.count()

    def new_id(self) -> str:
        """Unique per process and start: pid, random, transport tag, a counter."""
        return f"{self._prefix}{next(self._ids):x}"

    def track(self, endpoint: str, given_id: str | None, status: int | str) -> Tracked:
        """Count ``endpoint``'s request in flight, with its id in the logs, and observe it when it ends
        with the status the transport left in ``Tracked.status`` (``status``: until then)."""
        return Tracked(self, endpoint, given_id, status)
