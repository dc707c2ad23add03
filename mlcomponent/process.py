"""One serving process: the ASGI app factory uvicorn imports in each worker process (``--workers``).

The one module above both transports: it builds the service, the HTTP app and, when
``--grpc-port`` asks, the gRPC server, started and stopped in the app's lifespan.
"""

from __future__ import annotations

import gc
import os

from mlcomponent.http.app import create_app
from mlcomponent.http.connections import default_max_connections
from mlcomponent.http.gateway import Gateway
from mlcomponent.logs import configure_logging
from mlcomponent.metrics import Metrics
from mlcomponent.runtime.service import Service
from mlcomponent.settings import ServeOptions, Settings


def app() -> Gateway:
    options = ServeOptions.from_env(os.environ)
    configure_logging(options.log_format, options.log_level)
    settings = Settings.build(options, os.environ)
    metrics = Metrics()
    service = Service(settings, sync_boxes=False, observer=metrics)
    transports = []
    if options.grpc_port is not None:
        from mlcomponent.grpc.server import GrpcServer  # grpcio is imported only when gRPC is served

        transports.append(GrpcServer(service.dataplane, metrics, host=options.host, port=options.grpc_port,
                                     token=settings.auth_token(), max_message=options.max_json_body_bytes,
                                     reuse_port=settings.workers > 1, hide_errors=options.hide_errors))
    app = create_app(service, metrics, transports)
    # Start-up objects (modules, the app) never become garbage: keep the cyclic GC off
    # them, and let it run less often; request objects are freed by reference counting.
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_generation_threshold(options.max_connections or default_max_connections()), 50, 100)
    return app


OBJECTS_PER_REQUEST = 32  # tracked objects a request in flight holds (measured: 20-30 on the infer path)


def young_generation_threshold(max_connections: int) -> int:
    """The cyclic GC's first threshold: above the objects of every request in flight at the connection cap.

    Requests in flight are young objects, freed by reference counting when they end. With a threshold
    below them (20,000 at 1,000 connections) the collector ran ten times a second, 7 ms each, and found
    them all alive: 7% of the process's CPU (docs/benchmarks.md). Closed connections are what it collects
    (cycles of about 26 objects each)."""
    return max(20_000, OBJECTS_PER_REQUEST * max_connections)
