"""The request wrapper both transports use: the request id (taken from the client or minted),
the in-flight gauge, the request counter and latency histogram, and the id in every log line."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlcomponent.logs import request_id
from mlcomponent.metrics import Metrics

_PREFIX = f"{os.getpid():x}-{os.urandom(3).hex()}-"


@dataclass
class Tracked:
    """One request while it runs: its id, and the status the transport sets before it ends."""

    id: str
    status: int | str


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

    @contextmanager
    def track(self, endpoint: str, given_id: str | None, status: int | str) -> Iterator[Tracked]:
        """Count ``endpoint``'s request in flight, with its id in the logs, and observe it when it ends
        with the status the transport left in ``Tracked.status`` (``status``: until then)."""
        started = time.perf_counter()
        tracked = Tracked(given_id or self.new_id(), status)
        metrics = self.metrics
        reset = request_id.set(tracked.id)
        metrics.in_flight.inc()
        try:
            yield tracked
        finally:
            metrics.in_flight.dec()
            request_id.reset(reset)
            metrics.observe_request(endpoint, tracked.status, time.perf_counter() - started, self.transport)
