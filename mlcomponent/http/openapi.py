"""A small OpenAPI 3 description of the service's endpoints (served at /docs and /openapi.json)."""

from __future__ import annotations

from typing import Any

from mlcomponent import __version__

_TENSOR = {"type": "object", "required": ["name", "datatype"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT32", "str", "BYTES", "FILE"]},
    "shape": {"type": "array", "items": {"type": "integer"}}, "parameters": {"type": "object"},
    "data": {"description": "Values (nested lists allowed, row-major), or a file-box key for FILE."}}}
_ERROR = {"description": "Error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}}


def openapi_document(model: str) -> dict[str, Any]:
    infer_body = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
    errors = {str(code): _ERROR for code in (400, 404, 413, 500, 503, 504)}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{model} (mlcomponent)", "version": __version__,
                 "description": "Open Inference Protocol (KServe V2) REST, with the FILE datatype (strings are BYTES)."},
        "paths": {
            "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": {"description": "live"}}}},
            "/v2/health/ready": {"get": {"summary": "Readiness", "responses": {
                "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/v2": {"get": {"summary": "Server metadata", "responses": {"200": {"description": "metadata"}}}},
            f"/v2/models/{model}": {"get": {"summary": "Model metadata (the docstring spec)",
                                            "responses": {"200": {"description": "metadata"}}}},
            f"/v2/models/{model}/ready": {"get": {"summary": "Model readiness",
                                                  "responses": {"200": {"description": "ready"}}}},
            f"/v2/models/{model}/infer": {"post": {
                "summary": "Run inference",
                "requestBody": {"content": {"application/json": {"schema": infer_body},
                                            "multipart/form-data": {"schema": {"type": "object", "properties": {
                                                "request": {"type": "string", "description": "the JSON request"}},
                                                "additionalProperties": {"type": "string", "format": "binary"}}},
                                            "application/octet-stream": {"schema": {
                                                "type": "string", "format": "binary",
                                                "description": "binary tensor extension"}}}},
                "responses": {"200": {"description": "outputs"}, **errors}}},
            f"/v2/models/{model}/files/{{key}}": {"get": {
                "summary": "Download a FILE output", "parameters": [
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the file"}, "404": _ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics"}}}},
        },
    }
