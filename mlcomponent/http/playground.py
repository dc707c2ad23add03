"""The playground page: a static page that draws a form from the model metadata."""

from __future__ import annotations

import json
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

PAGE = files("mlcomponent.http").joinpath("static/playground.html")


def playground_route(model_name: str) -> Route:
    """``GET /``; the model name is a DNS-1123 label, safe in HTML and JSON as it is."""
    html = PAGE.read_text(encoding="utf-8").replace("{{MODEL_NAME}}", model_name).replace(
        "{{MODEL_JSON}}", json.dumps(model_name))

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    return Route("/", page)
