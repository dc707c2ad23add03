"""The playground page: a static page that draws a form from the model metadata."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from mlcomponent.runtime.service import Service

PAGE = files("mlcomponent.http").joinpath("static/playground.html")


def playground_routes(service: Service) -> list[BaseRoute]:
    name = service.settings.model_name  # a DNS-1123 label: safe in HTML and JSON as it is
    html = PAGE.read_text(encoding="utf-8").replace("{{MODEL_NAME}}", name).replace("{{MODEL_JSON}}", json.dumps(name))

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    return [Route("/", page)]
