"""The Kubernetes objects an MLComponent becomes: a pure function from manifest to dicts.

``render`` prints them and the operator applies exactly them, so what you see is what
runs. Objects are built as dicts, never by formatting YAML text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mlcomponent import __version__
from mlcomponent.manifest import ConnectedBox, Manifest

PORT = 8080
PACKAGE_DIR = "/opt/mlcomponent"
CONFIG_DIR = "/etc/mlcomponent"
DATA_DIR = "/var/lib/mlcomponent"
MANAGED_BY = "mlcomponent-operator"
GRACE_SECONDS = 30


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class S3Mounts(_Model):
    storage_class: str = Field(description="Storage class of an S3 CSI driver; mountS3Box becomes a PVC of it.")
    size: str = "10Gi"


class OperatorConfig(_Model):
    """How manifests become objects on this cluster (the operator's ConfigMap)."""

    registries: dict[str, str] = Field(
        default_factory=dict, description="packageRegistryName -> package index URL (pip --index-url).")
    default_index_url: str | None = Field(
        "https://pypi.org/simple", description="Index for registry names not in `registries`; null to refuse them.")
    package: str = Field(f"mlcomponent=={__version__}", description="What the init container installs.")
    s3_endpoint: str | None = Field(None, description="S3 endpoint of the platform's boxes.")
    s3_region: str | None = None
    box_secret: str = Field("{box}-s3", description="Secret holding a box's credentials; {box} is its s3BoxName.")
    access_key_key: str = "accessKey"
    secret_key_key: str = "secretKey"
    s3_mounts: S3Mounts | None = Field(None, description="Mount boxes through a CSI driver instead of syncing.")
    run_as_user: int = 1000

    @classmethod
    def load(cls, path: str | Path | None) -> OperatorConfig:
        if path is None:
            return cls()
        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})

    def index_url(self, registry: str) -> str:
        url = self.registries.get(registry, self.default_index_url)
        if url is None:
            known = ", ".join(self.registries) or "none"
            raise ValueError(f"spec.mlService.packageRegistryName: {registry!r} is not a registry this operator "
                             f"knows (known: {known}); add it to the operator's `registries`")
        return url


def _env_name(box: str, what: str) -> str:
    return f"MLC_BOX_{re.sub(r'[^A-Za-z0-9]', '_', box).upper()}_{what}"


def labels(manifest: Manifest) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mlcomponent", "app.kubernetes.io/instance": manifest.metadata.name,
            "app.kubernetes.io/managed-by": MANAGED_BY}


def _metadata(manifest: Manifest, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels(manifest)}
    if manifest.metadata.namespace:
        meta["namespace"] = manifest.metadata.namespace
    return meta


def manifest_yaml(manifest: Manifest) -> str:
    data = manifest.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["metadata"] = {k: v for k, v in data["metadata"].items() if k in ("name", "namespace")}
    return str(yaml.safe_dump(data, sort_keys=False))


def boxes_file(manifest: Manifest, config: OperatorConfig) -> str:
    """The --boxes file for the runtime: mounted boxes are at their path, copied ones on S3."""
    boxes: dict[str, Any] = {}
    for box in manifest.spec.connected_boxes:
        if box.mount_s3_box is not None:
            boxes.setdefault(box.s3_box_name, {})["mounted"] = True
        else:
            s3 = {"bucket": box.s3_box_name, "accessKeyEnv": _env_name(box.s3_box_name, "ACCESS_KEY"),
                  "secretKeyEnv": _env_name(box.s3_box_name, "SECRET_KEY")}
            if config.s3_endpoint:
                s3["endpoint"] = config.s3_endpoint
            if config.s3_region:
                s3["region"] = config.s3_region
            boxes[box.s3_box_name] = {"s3": s3}
    return str(yaml.safe_dump({"boxes": boxes}, sort_keys=True))


def config_map(manifest: Manifest, config: OperatorConfig) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(manifest, f"{manifest.metadata.name}-manifest"),
            "data": {"mlcomponent.yaml": manifest_yaml(manifest), "boxes.yaml": boxes_file(manifest, config)}}


def _credentials(box_name: str, config: OperatorConfig) -> list[dict[str, Any]]:
    secret = config.box_secret.format(box=box_name)
    return [{"name": _env_name(box_name, env), "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for env, key in (("ACCESS_KEY", config.access_key_key), ("SECRET_KEY", config.secret_key_key))]


def _security(config: OperatorConfig) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "runAsUser": config.run_as_user}


def _volume_name(box: ConnectedBox) -> str:
    return f"box-{box.name}"[:63].rstrip("-")


def _box_volumes(manifest: Manifest, config: OperatorConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                       list[dict[str, Any]]]:
    """Volumes, main-container mounts, and sync init containers for the mounted boxes."""
    volumes, mounts, syncs = [], [], []
    image = manifest.spec.image.existing_image_name
    for box in manifest.spec.connected_boxes:
        if box.mount_s3_box is None or box.path is None:
            continue
        name = _volume_name(box)
        if config.s3_mounts is not None:
            claim = f"{manifest.metadata.name}-{box.name}"[:253]
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            mount = {"name": name, "mountPath": box.path, "readOnly": True}
            if box.mount_s3_box.sub_path.strip("/"):
                mount["subPath"] = box.mount_s3_box.sub_path.strip("/")
            mounts.append(mount)
            continue
        volumes.append({"name": name, "emptyDir": {}})
        mounts.append({"name": name, "mountPath": box.path, "readOnly": True})
        command = ["python", "-m", "mlcomponent", "sync-box", box.s3_box_name, box.path,
                   "--sub-path", box.mount_s3_box.sub_path,
                   "--access-key-env", _env_name(box.s3_box_name, "ACCESS_KEY"),
                   "--secret-key-env", _env_name(box.s3_box_name, "SECRET_KEY")]
        if config.s3_endpoint:
            command += ["--endpoint", config.s3_endpoint]
        if config.s3_region:
            command += ["--region", config.s3_region]
        syncs.append({
            "name": f"sync-{box.name}"[:63].rstrip("-"), "image": image, "command": command,
            "env": [{"name": "PYTHONPATH", "value": PACKAGE_DIR}, *_credentials(box.s3_box_name, config)],
            "volumeMounts": [{"name": "mlcomponent", "mountPath": PACKAGE_DIR, "readOnly": True},
                             {"name": name, "mountPath": box.path}],
            "securityContext": _security(config),
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        })
    return volumes, mounts, syncs


def claims(manifest: Manifest, config: OperatorConfig) -> list[dict[str, Any]]:
    if config.s3_mounts is None:
        return []
    result = []
    for box in manifest.spec.connected_boxes:
        if box.mount_s3_box is None:
            continue
        meta = _metadata(manifest, f"{manifest.metadata.name}-{box.name}"[:253])
        meta["annotations"] = {"unified-platform.cs.hse.ru/s3-box": box.s3_box_name}
        result.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": {
            "accessModes": ["ReadOnlyMany"], "storageClassName": config.s3_mounts.storage_class,
            "resources": {"requests": {"storage": config.s3_mounts.size}}}})
    return result


def _resources(manifest: Manifest) -> dict[str, Any]:
    limits = manifest.spec.image.resource_limits
    values = {k: v for k, v in (("cpu", limits.cpu if limits else None),
                                ("memory", limits.memory if limits else None)) if v}
    # Requests equal to limits: a synchronous service wants Guaranteed QoS (no CPU
    # throttling surprises, no eviction before BestEffort pods).
    return {"limits": dict(values), "requests": dict(values)} if values else {}


def deployment(manifest: Manifest, config: OperatorConfig) -> dict[str, Any]:
    name = manifest.metadata.name
    image = manifest.spec.image.existing_image_name
    box_volumes, box_mounts, syncs = _box_volumes(manifest, config)
    copied = [b for b in manifest.spec.connected_boxes if b.copy_s3_box is not None]
    files_path = manifest.inference.file_exchange.inference_files_path
    probe = {"httpGet": {"path": "/v2/health/live", "port": "http"}}
    install = {
        "name": "install-mlcomponent", "image": image,
        "command": ["python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                    "--target", PACKAGE_DIR, "--index-url", config.index_url(manifest.spec.ml_service.package_registry_name),
                    config.package],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "mlcomponent", "mountPath": PACKAGE_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _security(config),
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    main = {
        "name": "inference", "image": image,
        "command": ["python", "-m", "mlcomponent", "serve", f"{CONFIG_DIR}/mlcomponent.yaml", "--module-root", ".",
                    "--host", "0.0.0.0", "--port", str(PORT), "--boxes", f"{CONFIG_DIR}/boxes.yaml",
                    "--data-root", DATA_DIR, "--grace-period", str(GRACE_SECONDS), "--log-format", "json"],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": "PYTHONPATH", "value": PACKAGE_DIR}, {"name": "HOME", "value": "/tmp"},
                *({"name": v.name, "value": v.value} for v in manifest.spec.env),
                *(item for box in copied for item in _credentials(box.s3_box_name, config))],
        "resources": _resources(manifest),
        "volumeMounts": [{"name": "mlcomponent", "mountPath": PACKAGE_DIR, "readOnly": True},
                         {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR},
                         {"name": "files", "mountPath": files_path},
                         {"name": "tmp", "mountPath": "/tmp"},
                         *box_mounts],
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 150, "timeoutSeconds": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 2},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2,
                           "failureThreshold": 2, "timeoutSeconds": 2},
        "securityContext": _security(config),
    }
    if not main["resources"]:
        del main["resources"]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(manifest, name),
        "spec": {
            # No `replicas`: the Deployment's default (1) or the platform's autoscaler owns it.
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name, "app.kubernetes.io/name": "mlcomponent"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(manifest),
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_SECONDS + 10,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": config.run_as_user,
                                        "runAsGroup": config.run_as_user, "fsGroup": config.run_as_user,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": [install, *syncs],
                    "containers": [main],
                    "volumes": [
                        {"name": "mlcomponent", "emptyDir": {}},
                        {"name": "config", "configMap": {"name": f"{name}-manifest"}},
                        {"name": "data", "emptyDir": {}},
                        {"name": "files", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        *box_volumes,
                    ],
                },
            },
        },
    }


def service(manifest: Manifest) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(manifest, manifest.metadata.name),
            "spec": {"type": "ClusterIP",
                     "selector": {"app.kubernetes.io/instance": manifest.metadata.name,
                                  "app.kubernetes.io/name": "mlcomponent"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}


def render(manifest: Manifest, config: OperatorConfig | None = None) -> list[dict[str, Any]]:
    """Every object, in the order to apply them."""
    config = config or OperatorConfig()
    return [config_map(manifest, config), *claims(manifest, config), deployment(manifest, config), service(manifest)]


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Multi-line strings (the manifest in the ConfigMap) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return str(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False))


def service_url(manifest: Manifest) -> str:
    namespace = manifest.metadata.namespace or "default"
    return f"http://{manifest.metadata.name}.{namespace}.svc.cluster.local/v2/models/{manifest.metadata.name}"
