"""The operator (kopf): keep each MLComponent's ConfigMap, Deployment and Service true.

Thin handlers over two pure pieces: ``problems_of`` (the same rules as ``validate``)
and ``render`` (the same objects as ``mlcomponent render``). Objects are applied with
server-side apply and owned by the MLComponent, so deleting it deletes them.
"""

from __future__ import annotations

import datetime
import logging
from functools import lru_cache
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from mlcomponent.kubernetes.crd import PLURAL, VERSION
from mlcomponent.kubernetes.render import MANAGED_BY, OperatorConfig, render, service_url
from mlcomponent.manifest import API_GROUP, Manifest, format_loc, problems_of

FIELD_MANAGER = "mlcomponent-operator"
log = logging.getLogger("mlcomponent.operator")
SETTINGS: dict[str, Any] = {"config": OperatorConfig()}


@lru_cache(maxsize=1)
def _api() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _dynamic() -> DynamicClient:
    return DynamicClient(_api())


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(status: str, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "Ready", "status": status, "reason": reason, "message": message,
                                 "lastTransitionTime": _now()}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def deployment_readiness(deployment: dict[str, Any]) -> tuple[str, str, str]:
    """(status, reason, message) of the Ready condition, from a Deployment's status."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < generation:
        return "False", "RolloutPending", "the Deployment controller has not seen the latest spec yet"
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "False", "ProgressDeadlineExceeded", progressing.get("message", "the rollout is stuck")
    if wanted == 0:
        return "False", "ScaledToZero", "the Deployment has 0 replicas"
    if updated >= wanted and available >= wanted and conditions.get("Available", {}).get("status") == "True":
        return "True", "DeploymentAvailable", f"{available}/{wanted} replicas available"
    return "False", "RolloutInProgress", f"{available}/{wanted} replicas available, {updated} updated"


def manifest_data(body: Any) -> dict[str, Any]:
    """The manifest as `validate` sees it: server-set metadata left out."""
    metadata = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: metadata[k] for k in ("name", "namespace") if k in metadata},
            "spec": dict(body.get("spec") or {})}


def _invalid(body: Any, patch: kopf.Patch, message: str) -> kopf.PermanentError:
    generation = body.get("metadata", {}).get("generation")
    patch.status["conditions"] = [ready_condition("False", "InvalidSpec", message, generation)]
    patch.status["observedGeneration"] = generation
    kopf.warn(body, reason="InvalidSpec", message=message)
    return kopf.PermanentError(message)


def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply one object as our field manager; conflicts with others are retried."""
    resource = _dynamic().resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    try:
        result = resource.server_side_apply(body=obj, name=obj["metadata"]["name"],
                                            namespace=obj["metadata"].get("namespace"),
                                            field_manager=FIELD_MANAGER, force_conflicts=True)
    except ApiException as error:
        if error.status in (409, 429) or error.status >= 500:
            raise kopf.TemporaryError(f"applying {obj['kind']} {obj['metadata']['name']}: {error.reason}",
                                      delay=2) from None
        raise kopf.PermanentError(f"applying {obj['kind']} {obj['metadata']['name']}: {error.status} "
                                  f"{error.reason}: {error.body}") from None
    return result.to_dict()  # type: ignore[no-any-return]


@kopf.on.resume(API_GROUP, VERSION, PLURAL)
@kopf.on.create(API_GROUP, VERSION, PLURAL)
@kopf.on.update(API_GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    manifest, problems = problems_of(manifest_data(body))
    if problems or manifest is None:
        raise _invalid(body, patch, "\n".join(f"{format_loc(p.loc)}: {p.message}" for p in problems))
    try:
        objects = render(manifest, SETTINGS["config"])
    except ValueError as error:
        raise _invalid(body, patch, str(error)) from None
    deployment: dict[str, Any] = {}
    for obj in objects:
        kopf.append_owner_reference(obj, owner=body)
        applied = apply(obj)
        if obj["kind"] == "Deployment":
            deployment = applied
    generation = body["metadata"].get("generation")
    status, reason, message = deployment_readiness(deployment)
    patch.status["observedGeneration"] = generation
    patch.status["url"] = service_url(manifest)
    patch.status["conditions"] = [ready_condition(status, reason, message, generation)]


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def deployment_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A Deployment we own changed: carry its readiness to the MLComponent's status."""
    if type == "DELETED":
        return
    owner = next((ref for ref in body.get("metadata", {}).get("ownerReferences") or []
                  if ref.get("kind") == "MLComponent"), None)
    if owner is None:
        return
    namespace = body["metadata"]["namespace"]
    api = client.CustomObjectsApi(_api())
    try:
        parent = api.get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, owner["name"])
    except ApiException as error:
        if error.status == 404:
            return
        raise kopf.TemporaryError(f"reading MLComponent {owner['name']}: {error.reason}", delay=2) from None
    conditions = (parent.get("status") or {}).get("conditions") or []
    if any(c.get("reason") == "InvalidSpec" for c in conditions):
        return
    status, reason, message = deployment_readiness(dict(body))
    current: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    if (current.get("status"), current.get("reason"), current.get("message")) == (status, reason, message):
        return
    generation = parent["metadata"].get("generation")
    patch = {"status": {"conditions": [ready_condition(status, reason, message, generation)]}}
    try:
        api.patch_namespaced_custom_object_status(API_GROUP, VERSION, namespace, PLURAL, owner["name"], patch)
    except ApiException as error:
        raise kopf.TemporaryError(f"updating MLComponent {owner['name']} status: {error.reason}", delay=2) from None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    settings.networking.request_timeout = 30


def in_cluster() -> bool:
    import os

    return "KUBERNETES_SERVICE_HOST" in os.environ


def run(config_path: str | None, namespaces: list[str], verbose: bool) -> None:
    SETTINGS["config"] = OperatorConfig.load(config_path)
    kopf.configure(verbose=verbose)
    kopf.run(standalone=True, namespaces=namespaces or (), clusterwide=not namespaces,
             liveness_endpoint="http://0.0.0.0:8080/healthz" if in_cluster() else None)


__all__ = ["Manifest", "deployment_readiness", "reconcile", "run"]
