"""The MLComponent CustomResourceDefinition, its schema generated from the manifest model.

One source of truth: ``Manifest`` (pydantic) is turned into a structural OpenAPI v3
schema. Cross-field rules that a plain schema cannot say can be added as CEL
``x-kubernetes-validations`` (``--cel``, Kubernetes 1.25+); either way the operator
reports the same rules in status, with the message ``validate`` gives.
"""

from __future__ import annotations

from typing import Any

from mlcomponent.manifest import API_GROUP, KIND, Manifest

PLURAL = "mlcomponents"
SINGULAR = "mlcomponent"
VERSION = "v1"
CRD_NAME = f"{PLURAL}.{API_GROUP}"
MAX_BOXES = 32
MAX_ENV = 256
MAX_STRING = 1024

# Keys pydantic emits that a structural schema does not take (or that we do not want).
_DROP = {"title", "additionalProperties", "$defs", "const", "default"}
# Lists whose items are keyed by `name`: the API server then refuses duplicates, and
# server-side apply merges them by key.
_LIST_MAPS = {"env", "connectedBoxes"}

CEL_RULES: list[dict[str, str]] = [
    {"rule": "self.connectedBoxes.exists(b, b.name == self.mlService.inference.fileExchange.fileBox)",
     "message": "spec.mlService.inference.fileExchange.fileBox must name an entry of spec.connectedBoxes"},
    {"rule": "self.connectedBoxes.exists(b, b.name == self.mlService.inference.model.modelBox)",
     "message": "spec.mlService.inference.model.modelBox must name an entry of spec.connectedBoxes"},
]
BOX_RULES: list[dict[str, str]] = [
    {"rule": "has(self.mountS3Box) != has(self.copyS3Box)",
     "message": "a connected box needs exactly one of mountS3Box and copyS3Box"},
    {"rule": "!has(self.mountS3Box) || has(self.path)",
     "message": "a box with mountS3Box needs `path`, the folder where it appears"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _resolve(defs[node["$ref"].split("/")[-1]], defs)
    if "anyOf" in node:  # Optional[X] -> X; optionality is "not in required"
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            merged = {**_resolve(options[0], defs), **{k: v for k, v in node.items() if k not in ("anyOf",)}}
            return _resolve(merged, defs)
    result = {key: _resolve(value, defs) for key, value in node.items() if key not in _DROP}
    if "const" in node:
        result["enum"] = [node["const"]]
    if result.get("type") == "string" and "maxLength" not in result and "enum" not in result:
        result["maxLength"] = MAX_STRING
    return result


def _annotate(node: dict[str, Any], name: str = "", cel: bool = False) -> dict[str, Any]:
    for key, child in node.get("properties", {}).items():
        _annotate(child, key, cel)
    if node.get("type") == "array":
        _annotate(node["items"], name, cel)
        if name in _LIST_MAPS:
            node["x-kubernetes-list-type"] = "map"
            node["x-kubernetes-list-map-keys"] = ["name"]
            node["maxItems"] = MAX_BOXES if name == "connectedBoxes" else MAX_ENV
            node["items"].setdefault("required", [])
            if "name" not in node["items"]["required"]:
                node["items"]["required"].insert(0, "name")
        if name == "connectedBoxes" and cel:
            node["items"]["x-kubernetes-validations"] = BOX_RULES
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["additionalProperties"] = {"type": "string"}
    return node


def spec_schema(cel: bool = False) -> dict[str, Any]:
    """The structural schema of ``spec``, generated from the pydantic model.

    ``cel`` adds the cross-field rules as CEL validations: Kubernetes 1.25 and newer
    enforce them; older API servers (and kubectl's client-side validation against
    them) refuse the unknown field, so they are opt-in.
    """
    raw = Manifest.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    spec = _annotate(_resolve(defs["Spec"], defs), cel=cel)
    if cel:
        spec["x-kubernetes-validations"] = CEL_RULES
    return spec


def status_schema() -> dict[str, Any]:
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,  # kopf keeps its own bookkeeping here
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "url": {"type": "string"},
            "conditions": {"type": "array", "items": condition, "x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["type"]},
        },
    }


def crd(cel: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "mlcomponent"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": ["mlc"],
                      "listKind": f"{KIND}List", "categories": ["all"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Reason", "type": "string", "priority": 1,
                     "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"},
                    {"name": "URL", "type": "string", "jsonPath": ".status.url"},
                    {"name": "Image", "type": "string", "priority": 1, "jsonPath": ".spec.image.existingImageName"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A synchronous model service: one Python inference function behind the "
                                   "Open Inference Protocol.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(cel),
                        "status": status_schema(),
                    },
                }},
            }],
        },
    }
