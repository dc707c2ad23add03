"""Prometheus metrics for every transport: requests, latencies, in-flight and queued work,
and what the runtime reports through its ``Observer`` hooks (restarts, model load, file bytes).

With several worker processes, prometheus-client's multiprocess mode aggregates them
(``PROMETHEUS_MULTIPROC_DIR``, set by ``mlcomponent serve``).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

from mlcomponent.runtime.events import Observer

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics(Observer):
    def __init__(self) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry
        self.requests = Counter("mlcomponent_requests_total", "Requests by endpoint, status and transport "
                                "(http: an HTTP status; grpc: a gRPC status code name).",
                                ["endpoint", "status", "transport"], registry=registry)
        self.request_seconds = Histogram("mlcomponent_request_seconds", "Whole-request latency.",
                                         ["endpoint", "transport"], buckets=BUCKETS, registry=registry)
        self.inference_seconds = Histogram("mlcomponent_inference_seconds", "From the staged request to the function's "
                                           "answer: the wait for the worker (and for a batch), the hop, the call.",
                                           buckets=BUCKETS, registry=registry)
        self.in_flight = Gauge("mlcomponent_requests_in_flight", "Requests being served.",
                               multiprocess_mode="livesum", registry=registry)
        self.queued = Gauge("mlcomponent_requests_queued", "Requests waiting for the function.",
                            multiprocess_mode="livesum", registry=registry)
        self.restarts = Counter("mlcomponent_worker_restarts_total", "Worker processes restarted (crash, timeout).",
                                registry=registry)
        self.model_load = Gauge("mlcomponent_model_load_seconds", "Seconds the warm-up call (model load) took.",
                                multiprocess_mode="max", registry=registry)
        self.file_bytes = Counter("mlcomponent_file_bytes_total", "Bytes of FILE data moved.", ["direction"],
                                  registry=registry)
        self.batch_size = Histogram("mlcomponent_batch_size", "Requests merged into one call of the function "
                                    "(Batching).", buckets=BATCH_BUCKETS, registry=registry)
        self.batch_queue_seconds = Histogram("mlcomponent_batch_queue_seconds", "Seconds a request waited to be "
                                             "batched before its call was sent.", buckets=(0.0001, 0.00025, *BUCKETS),
                                             registry=registry)
        self.queue_wait_seconds = Histogram("mlcomponent_queue_wait_seconds", "Seconds a call waited for the "
                                            "calls ahead of it before it ran.", buckets=(0.0001, 0.00025, *BUCKETS),
                                            registry=registry)
        self.refusals = Counter("mlcomponent_refusals_total", "Requests refused (503) before they queued, by reason: "
                                "not_ready, queue_full (--max-queue), queue_wait (--max-queue-wait), deadline (the "
                                "request's own).", ["reason"], registry=registry)
        self._children: dict[tuple[str, int | str, str], tuple[Counter, Histogram]] = {}
        self._refusal_children: dict[str, Counter] = {}

    def observe_request(self, endpoint: str, status: int | str, seconds: float, transport: str = "http") -> None:
        key = (endpoint, status, transport)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(endpoint, str(status), transport),
                        self.request_seconds.labels(endpoint, transport))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def worker_restarted(self) -> None:
        self.restarts.inc()

    def inference_finished(self, seconds: float) -> None:
        self.inference_seconds.observe(seconds)

    def batch_sent(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for wait in waits:
            self.batch_queue_seconds.observe(wait)

    def queue_waited(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def refused(self, reason: str) -> None:
        child = self._refusal_children.get(reason)  # under overload this runs thousands of times a second
        if child is None:
            child = self._refusal_children[reason] = self.refusals.labels(reason)
        child.inc()

    def model_loaded(self, seconds: float) -> None:
        self.model_load.set(seconds)

    def files_moved(self, bytes_in: int, bytes_out: int) -> None:
        if bytes_in:
            self.file_bytes.labels("in").inc(bytes_in)
        if bytes_out:
            self.file_bytes.labels("out").inc(bytes_out)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
