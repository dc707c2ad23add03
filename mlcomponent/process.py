"""One serving process: the ASGI app factory uvicorn imports in each worker process (``--workers``).

The one module above both transports: it builds the service, the HTTP app and, when
``--grpc-port`` asks, the gRPC server, started and stopped in the app's lifespan.
"""

from __future__ import annotations

import gc
import os

from mlcomponent.garbage import FLOOR, YoungGeneration, ceiling_for
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
    # them, and let it run as often as it finds garbage (``garbage.py``); request objects
    # are freed by reference counting.
    gc.collect()
    gc.freeze()
    gc.set_threshold(FLOOR, 50, 100)
    YoungGeneration(ceiling_for(options.max_connections or default_max_connections())).install()
    return app
