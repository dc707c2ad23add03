"""The operator (kopf): keep each MLComponent's ConfigMap, Deployment and Service true.

Thin handlers over pure pieces: ``problems_of`` (the same rules as ``validate``),
``render`` (the same objects as ``mlcomponent render``) and ``status.readiness`` (the
Ready condition from the Deployment and its pods). Objects are applied with
server-side apply and owned by the MLComponent, so deleting it deletes them. The
configuration lives in kopf's ``memo``, set once by ``run``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import threading
from functools import lru_cache
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from mlcomponent.kubernetes.crd import PLURAL, VERSION
from mlcomponent.kubernetes.render import (
    FILES_SECRET_KEY,
    MANAGED_BY,
    MODEL_CONTENT,
    OperatorConfig,
    UnknownRegistry,
    files_secret_name,
    labels,
    render,
    service_url,
)
from mlcomponent.kubernetes.status import Readiness, deployment_readiness, readiness, ready_condition
from mlcomponent.manifest import API_GROUP, Manifest, format_loc, problems_of

FIELD_MANAGER = "mlcomponent-operator"
LOG_LINES = 10
REFUSED = {"InvalidSpec", "UnknownPackageRegistry"}  # nothing runs: pod and Deployment events change nothing
log = logging.getLogger("mlcomponent.operator")


@lru_cache(maxsize=1)
def _api() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


@lru_cache(maxsize=1)
def _dynamic() -> DynamicClient:
    """Built once: a DynamicClient runs API discovery when it is made."""
    return DynamicClient(_api())


def manifest_data(body: Any) -> dict[str, Any]:
    """The manifest as `validate` sees it: server-set metadata left out."""
    metadata = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {k: metadata[k] for k in ("name", "namespace") if k in metadata},
            "spec": dict(body.get("spec") or {})}


def _refuse(body: Any, patch: kopf.Patch, reason: str, message: str) -> kopf.PermanentError:
    generation = body.get("metadata", {}).get("generation")
    patch.status["conditions"] = [ready_condition(Readiness("False", reason, message), generation)]
    patch.status["observedGeneration"] = generation
    kopf.warn(body, reason=reason, message=message)
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


def _pods(namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGED_BY}"
    listed = client.CoreV1Api(_api()).list_namespaced_pod(namespace, label_selector=selector)
    return [_api().sanitize_for_serialization(pod) for pod in listed.items]


def _logs(namespace: str, pod: str, container: str, previous: bool) -> list[str]:
    """The last lines a container wrote; none when the kubelet has none (a container that never started)."""
    try:
        text = client.CoreV1Api(_api()).read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=LOG_LINES, previous=previous, _request_timeout=5)
    except (ApiException, OSError) as error:
        log.debug("no logs of %s/%s %s: %s", namespace, pod, container, error)
        return []
    return str(text).splitlines()[-LOG_LINES:]


def current_readiness(namespace: str, name: str, deployment: dict[str, Any]) -> Readiness:
    pods = _pods(namespace, name)
    return readiness(deployment, pods, lambda wanted: _logs(namespace, wanted.pod, wanted.container, wanted.previous))


def _ready_condition(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def ensure_files_secret(manifest: Manifest, body: Any) -> None:
    """One random signing key per component, owned by it: made once, never replaced by us."""
    namespace = manifest.metadata.namespace or "default"
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": files_secret_name(manifest), "namespace": namespace, "labels": labels(manifest)},
              "data": {FILES_SECRET_KEY: base64.b64encode(secrets.token_urlsafe(32).encode()).decode()}}
    kopf.append_owner_reference(secret, owner=body)
    try:
        client.CoreV1Api(_api()).create_namespaced_secret(namespace, secret)
    except ApiException as error:
        if error.status == 409:  # it exists: links signed with it stay valid
            return
        raise kopf.TemporaryError(f"creating Secret {secret['metadata']['name']}: {error.reason}", delay=5) from None


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """The model poll runs every period: say each problem once, not every 30 s."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def _box_credentials(namespace: str, box: str, config: OperatorConfig) -> tuple[str, str] | None:
    try:
        found = client.CoreV1Api(_api()).read_namespaced_secret(config.box_secret.format(box=box), namespace)
    except ApiException as error:
        _warn_once(f"model box {box}: no credentials Secret {config.box_secret.format(box=box)} in {namespace} "
                   f"({error.reason}); its new models are not noticed")
        return None
    data = found.data or {}
    try:
        return (base64.b64decode(data[config.access_key_key]).decode(),
                base64.b64decode(data[config.secret_key_key]).decode())
    except KeyError as error:
        _warn_once(f"model box {box}: its Secret has no key {error}; its new models are not noticed")
        return None


_CLIENTS = threading.Lock()


@lru_cache(maxsize=64)
def _s3_client(endpoint: str | None, region: str | None, access_key: str, secret_key: str) -> Any:
    """One client per box credentials, made once: a new boto3 session and client cost ~0.1 s
    of CPU, and the poll runs every period for every component."""
    from botocore.config import Config

    with _CLIENTS:  # a boto3 session is not safe to make clients from in two threads at once
        return _session().client(
            "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10,
                          s3={"addressing_style": "path"}))


@lru_cache(maxsize=1)
def _session() -> Any:
    import boto3

    return boto3.session.Session()


def content_hash(objects: list[tuple[str, str, int]]) -> str:
    """A short hash of (key, ETag, size) under the model's subPath: a new upload is a new hash."""
    digest = hashlib.sha256()
    for key, etag, size in sorted(objects):
        digest.update(f"{key}\0{etag}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def model_content(manifest: Manifest, config: OperatorConfig) -> str | None:
    """The content hash of the model box's subPath in S3; None when it cannot be listed (kept as it was)."""
    box = manifest.box(manifest.inference.model.model_box)
    if box.mount_s3_box is None:
        return None
    namespace = manifest.metadata.namespace or "default"
    credentials = _box_credentials(namespace, box.s3_box_name, config)
    if credentials is None:
        return None
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = _s3_client(config.s3_endpoint, config.s3_region, *credentials)
    prefix = box.mount_s3_box.sub_path.strip("/")
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=box.s3_box_name,
                                                              Prefix=f"{prefix}/" if prefix else "")
        listed = [(str(o["Key"]), str(o.get("ETag", "")).strip('"'), int(o["Size"]))
                  for page in pages for o in page.get("Contents", [])]
    except (BotoCoreError, ClientError) as error:
        _warn_once(f"model box {box.s3_box_name}: cannot list {box.mount_s3_box.sub_path!r}: {error}")
        return None
    return content_hash(listed)


def _deployed_content(namespace: str, name: str) -> str | None:
    """The content hash the Deployment's pods were made for ("" for none; None: no Deployment yet)."""
    try:
        found = client.AppsV1Api(_api()).read_namespaced_deployment(name, namespace)
    except ApiException:
        return None
    template = found.spec.template.metadata if found.spec and found.spec.template else None
    return str(((template.annotations if template else None) or {}).get(MODEL_CONTENT, ""))


def _apply_all(manifest: Manifest, config: OperatorConfig, body: Any, content: str | None) -> dict[str, Any]:
    """The files Secret, then every rendered object; returns the Deployment as applied."""
    ensure_files_secret(manifest, body)
    deployment: dict[str, Any] = {}
    for obj in render(manifest, config, content):
        kopf.append_owner_reference(obj, owner=body)
        applied = apply(obj)
        if obj["kind"] == "Deployment":
            deployment = applied
    return deployment


@kopf.on.resume(API_GROUP, VERSION, PLURAL)
@kopf.on.create(API_GROUP, VERSION, PLURAL)
@kopf.on.update(API_GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    manifest, problems = problems_of(manifest_data(body))
    if problems or manifest is None:
        raise _refuse(body, patch, "InvalidSpec", "\n".join(f"{format_loc(p.loc)}: {p.message}" for p in problems))
    try:
        render(manifest, memo.config)  # refused before anything is applied
    except UnknownRegistry as error:
        raise _refuse(body, patch, "UnknownPackageRegistry", str(error)) from None
    except ValueError as error:
        raise _refuse(body, patch, "InvalidSpec", str(error)) from None
    namespace = manifest.metadata.namespace or "default"
    content = model_content(manifest, memo.config) or _deployed_content(namespace, manifest.metadata.name) or None
    deployment = _apply_all(manifest, memo.config, body, content)
    if content:
        patch.status["modelContent"] = content
    generation = body["metadata"].get("generation")
    state = current_readiness(manifest.metadata.namespace or "default", manifest.metadata.name, deployment)
    current = _ready_condition((body.get("status") or {}).get("conditions") or [])
    patch.status["observedGeneration"] = generation
    patch.status["url"] = service_url(manifest)
    patch.status["conditions"] = [ready_condition(state, generation, current)]


def refresh(namespace: str, name: str, deployment: dict[str, Any] | None = None) -> None:
    """Carry the Deployment's and its pods' state to the MLComponent's Ready condition."""
    api = client.CustomObjectsApi(_api())
    try:
        parent = api.get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name)
        if deployment is None:
            deployment = _api().sanitize_for_serialization(
                client.AppsV1Api(_api()).read_namespaced_deployment(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return
        raise kopf.TemporaryError(f"reading MLComponent {name}: {error.reason}", delay=2) from None
    current = _ready_condition((parent.get("status") or {}).get("conditions") or [])
    if current.get("reason") in REFUSED:
        return
    state = current_readiness(namespace, name, deployment or {})
    if (current.get("status"), current.get("reason"), current.get("message")) == state:
        return
    # the generation reconcile last applied: a pod event between a spec change and its
    # reconcile must not mark the new generation ready
    generation = (parent.get("status") or {}).get("observedGeneration")
    patch = {"status": {"conditions": [ready_condition(state, generation, current)]}}
    try:
        api.patch_namespaced_custom_object_status(API_GROUP, VERSION, namespace, PLURAL, name, patch)
    except ApiException as error:
        raise kopf.TemporaryError(f"updating MLComponent {name} status: {error.reason}", delay=2) from None


def check_model(body: dict[str, Any], config: OperatorConfig) -> str | None:
    """New objects under the model's subPath roll the Deployment (new pods sync them); returns the new hash."""
    manifest, problems = problems_of(manifest_data(body))
    current = _ready_condition((body.get("status") or {}).get("conditions") or [])
    if problems or manifest is None or current.get("reason") in REFUSED:
        return None
    namespace, name = manifest.metadata.namespace or "default", manifest.metadata.name
    deployed = _deployed_content(namespace, name)
    content = model_content(manifest, config)
    if content is None or deployed is None or content == deployed:
        return None  # unknown, not reconciled yet (reconcile puts it in), or unchanged
    log.info("[%s/%s] the model changed (%s -> %s): rolling out", namespace, name, deployed or "none", content)
    _apply_all(manifest, config, body, content)
    client.CustomObjectsApi(_api()).patch_namespaced_custom_object_status(
        API_GROUP, VERSION, namespace, PLURAL, name, {"status": {"modelContent": content}})
    return content


def poll_models(config: OperatorConfig, namespaces: list[str]) -> int:
    """One pass over every MLComponent watched; how many rolled."""
    api = client.CustomObjectsApi(_api())
    if namespaces:
        found = [item for namespace in namespaces
                 for item in api.list_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL)["items"]]
    else:
        found = api.list_cluster_custom_object(API_GROUP, VERSION, PLURAL)["items"]
    rolled = 0
    for body in found:
        if body.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            rolled += check_model(body, config) is not None
        except (ApiException, kopf.TemporaryError, kopf.PermanentError) as error:
            log.warning("[%s/%s] checking the model box failed: %s", body["metadata"].get("namespace"),
                        body["metadata"].get("name"), error)
    log.debug("polled the model boxes of %d components, %d rolled", len(found), rolled)
    return rolled


async def _poll_forever(memo: kopf.Memo) -> None:
    """Not a kopf timer: kopf puts a finalizer on objects with timers, and deleting a
    component must not wait for the operator (deletion is garbage collection's)."""
    while True:
        await asyncio.sleep(memo.config.model_poll_seconds)
        try:
            await asyncio.to_thread(poll_models, memo.config, memo.namespaces)
        except Exception:  # the next pass tries again; the API server may be restarting
            log.exception("polling the model boxes failed")


@kopf.on.startup()
async def start_model_poll(memo: kopf.Memo, **_: Any) -> None:
    memo.model_poll = asyncio.get_running_loop().create_task(_poll_forever(memo))


@kopf.on.cleanup()
async def stop_model_poll(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("model_poll")
    if task is not None:
        task.cancel()


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def deployment_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A Deployment we own changed: its readiness goes to the MLComponent's status."""
    if type == "DELETED":
        return
    owner = next((ref for ref in body.get("metadata", {}).get("ownerReferences") or []
                  if ref.get("kind") == "MLComponent"), None)
    if owner is not None:
        refresh(body["metadata"]["namespace"], owner["name"], dict(body))


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def pod_changed(body: kopf.Body, **_: Any) -> None:
    """A pod of ours changed (a container failed, started, became ready): refresh the status."""
    name = (body.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/instance")
    if name:
        refresh(body["metadata"]["namespace"], name)


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
    # Without a file: the strict defaults (no registries), never render's preview.
    settings = OperatorConfig.load(config_path) if config_path else OperatorConfig()
    kopf.configure(verbose=verbose, log_prefix=True)  # each line names its object: [namespace/name]
    if not settings.registries and settings.default_index_url is None:
        log.warning("no package registries configured: every MLComponent will be refused (UnknownPackageRegistry); "
                    "set `registries` in the file given with --config")
    memo = kopf.Memo(config=settings, namespaces=list(namespaces))
    kopf.run(standalone=True, namespaces=namespaces or (), clusterwide=not namespaces, memo=memo,
             liveness_endpoint="http://0.0.0.0:8080/healthz" if in_cluster() else None)


__all__ = ["Manifest", "deployment_readiness", "reconcile", "run"]
