"""The ASGI app factory uvicorn imports in each worker process (``--workers``)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from mlcomponent.http.app import create_app
from mlcomponent.http.server import STOP_HOOKS
from mlcomponent.logs import configure_logging
from mlcomponent.runtime.service import Service
from mlcomponent.settings import ServeOptions, Settings


def app() -> Starlette:
    options = ServeOptions.from_env(os.environ)
    configure_logging(options.log_format, options.log_level)
    settings = Settings.build(options, os.environ)
    service = Service(settings, sync_boxes=False)
    STOP_HOOKS.append(service.stopping)
    return create_app(service)
