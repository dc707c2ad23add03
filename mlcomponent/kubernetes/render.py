"""The Kubernetes objects an MLComponent becomes: a pure function from manifest to dicts.

``render`` prints them and the operator applies exactly them, so what you see is what
runs. Objects are built as dicts, never by formatting YAML text.

Every command the pod runs starts with ``python3``: Debian's images (and images built
from them) have no ``python``, and the official Python images have both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic.alias_generators import to_camel

from mlcomponent import __version__
from mlcomponent.manifest import ConnectedBox, Manifest
from mlcomponent.options import DEFAULTS, flag

PYTHON = "python3"
PACKAGE_DIR = "/opt/mlcomponent"
CONFIG_DIR = "/etc/mlcomponent"
DATA_DIR = "/var/lib/mlcomponent"
MANAGED_BY = "mlcomponent-operator"
GRACE_SECONDS = int(DEFAULTS.grace_period)  # the service drains this long after SIGTERM (--grace-period)
PRESTOP_SECONDS = 5  # the pod keeps serving this long after it left the Service's endpoints
FILES_SECRET_ENV = "MLCOMPONENT_FILES_SECRET"  # signs download links: one value per component, every replica
FILES_SECRET_KEY = "secret"
MODEL_CONTENT = "unified-platform.cs.hse.ru/model-content"  # pod template annotation: the model's content hash
MODEL_VERSION_ENV = "MLCOMPONENT_MODEL_VERSION"  # the same hash, for the model's metadata
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")


@dataclass(frozen=True)
class Port:
    """A port the service listens on: its serve flag, the container port and the Service port."""

    name: str
    flag: str
    container: int
    service: int
    app_protocol: str | None = None


# One line per port: the serve flag, the container port and the Service port follow from it.
PORTS = [Port("http", "--port", 8080, 80), Port("grpc", "--grpc-port", 8081, 8081, app_protocol="grpc")]
DEADLINE_SECONDS = int(DEFAULTS.timeout or 0)  # the default deadline of one call (--timeout), stated so the pod's is visible
HTTP = PORTS[0]


class UnknownRegistry(ValueError):
    """The manifest names a package registry the operator's configuration does not list."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class S3Mounts(_Model):
    storage_class: str = Field(description="Storage class of an S3 CSI driver; mountS3Box becomes a PVC of it.")
    size: str = "10Gi"


class OperatorConfig(_Model):
    """How manifests become objects on this cluster (the operator's ConfigMap).

    There is no public package index by default: a ``packageRegistryName`` that is not
    in ``registries`` (and no ``defaultIndexUrl``) is refused.
    """

    registries: dict[str, str] = Field(
        default_factory=dict, description="packageRegistryName -> package index URL (PEP 503, pip --index-url).")
    default_index_url: str | None = Field(
        None, description="Index for registry names not in `registries`; null (the default) refuses them.")
    package: str = Field(f"mlcomponent=={__version__}",
                         description="What the init container installs: one exact version, name==version.")
    s3_endpoint: str | None = Field(None, description="S3 endpoint of the platform's boxes.")
    s3_region: str | None = None
    box_secret: str = Field("{box}-s3", description="Secret holding a box's credentials; {box} is its s3BoxName.")
    access_key_key: str = "accessKey"
    secret_key_key: str = "secretKey"
    s3_mounts: S3Mounts | None = Field(None, description="Mount boxes through a CSI driver instead of syncing.")
    run_as_user: int = 1000
    model_poll_seconds: float = Field(
        30, gt=0, le=3600, description="How often the operator lists each model box's subPath for new content "
                                       "(a change rolls the Deployment).")
    _preview: bool = PrivateAttr(False)

    @field_validator("package")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if not PINNED.match(value.strip()):
            raise ValueError(f"package {value!r} must pin one exact version, e.g. mlcomponent=={__version__}")
        return value.strip()

    @classmethod
    def load(cls, path: str | Path | None) -> OperatorConfig:
        """The configuration in ``path``; without one, a preview (for ``mlcomponent render``).

        A preview renders a registry it does not know as an address under ``.invalid``,
        a domain that never resolves: nothing is ever fetched from a guessed index.
        The operator never runs on a preview (see ``operator.run``).
        """
        if path is None:
            config = cls()
            config._preview = True
            return config
        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})

    def index_url(self, registry: str) -> str:
        url = self.registries.get(registry, self.default_index_url)
        if url is not None:
            return url
        if self._preview:
            return f"https://unconfigured-registry.invalid/{quote(registry, safe='')}/simple"
        known = ", ".join(sorted(self.registries)) or "none configured"
        raise UnknownRegistry(f"spec.mlService.packageRegistryName: {registry!r} is not in the operator's "
                              f"`registries` (known: {known}); add it there (the operator's ConfigMap), "
                              "mapping the name to the package index that publishes mlcomponent")


def _env_name(box: str, what: str) -> str:
    return f"MLC_BOX_{re.sub(r'[^A-Za-z0-9]', '_', box).upper()}_{what}"


def labels(manifest: Manifest) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mlcomponent", "app.kubernetes.io/instance": manifest.metadata.name,
            "app.kubernetes.io/managed-by": MANAGED_BY}


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/name": "mlcomponent"}


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


def files_secret_name(manifest: Manifest) -> str:
    """The Secret the operator creates once per component (random, never rotated by it)."""
    return f"{manifest.metadata.name}-files"[:253]


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


def _limits(cpu: str, memory: str, cpu_request: str, memory_request: str) -> dict[str, Any]:
    return {"limits": {"cpu": cpu, "memory": memory}, "requests": {"cpu": cpu_request, "memory": memory_request}}


def _volume_name(box: ConnectedBox) -> str:
    return f"box-{box.name}"[:63].rstrip("-")


def _mounted_boxes(manifest: Manifest) -> list[ConnectedBox]:
    return [b for b in manifest.spec.connected_boxes if b.mount_s3_box is not None and b.path is not None]


def _sync_container(manifest: Manifest, box: ConnectedBox, config: OperatorConfig) -> dict[str, Any]:
    """The init container that copies a mountS3Box's subPath into its emptyDir."""
    assert box.mount_s3_box is not None and box.path is not None
    command = [PYTHON, "-m", "mlcomponent", "sync-box", box.s3_box_name, box.path,
               "--sub-path", box.mount_s3_box.sub_path,
               "--access-key-env", _env_name(box.s3_box_name, "ACCESS_KEY"),
               "--secret-key-env", _env_name(box.s3_box_name, "SECRET_KEY")]
    if config.s3_endpoint:
        command += ["--endpoint", config.s3_endpoint]
    if config.s3_region:
        command += ["--region", config.s3_region]
    return {
        "name": f"sync-{box.name}"[:63].rstrip("-"), "image": manifest.spec.image.existing_image_name,
        "command": command,
        "env": [{"name": "PYTHONPATH", "value": PACKAGE_DIR}, {"name": "HOME", "value": "/tmp"},
                *_credentials(box.s3_box_name, config)],
        "volumeMounts": [{"name": "mlcomponent", "mountPath": PACKAGE_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}, {"name": _volume_name(box), "mountPath": box.path}],
        "securityContext": _security(config),
        "resources": _limits("500m", "256Mi", "100m", "128Mi"),
    }


def _box_volumes(manifest: Manifest, config: OperatorConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and main-container mounts for the mounted boxes (emptyDirs, or CSI claims)."""
    volumes, mounts = [], []
    for box in _mounted_boxes(manifest):
        assert box.mount_s3_box is not None
        name = _volume_name(box)
        mount: dict[str, Any] = {"name": name, "mountPath": box.path, "readOnly": True}
        if config.s3_mounts is None:
            volumes.append({"name": name, "emptyDir": {}})
        else:
            claim = f"{manifest.metadata.name}-{box.name}"[:253]
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            if box.mount_s3_box.sub_path.strip("/"):
                mount["subPath"] = box.mount_s3_box.sub_path.strip("/")
        mounts.append(mount)
    return volumes, mounts


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


def pip_install_command(index_url: str, package: str) -> list[str]:
    """pip of the image's own Python, so that compiled wheels match it; nothing but ``index_url``.

    ``--isolated`` (with ``PIP_CONFIG_FILE=/dev/null`` in the env) ignores any pip
    configuration the image carries, such as an ``extra-index-url`` to a public index;
    ``--only-binary`` runs no package's build code. pip checks the ``#sha256=`` of each
    file when the index gives one. An http:// index is one the platform chose to trust.
    """
    host = urlsplit(index_url)
    trusted = ["--trusted-host", host.netloc] if host.scheme == "http" and host.netloc else []
    return [PYTHON, "-m", "pip", "--isolated", "install", "--no-cache-dir", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", "--only-binary", ":all:", "--target", PACKAGE_DIR,
            "--index-url", index_url, *trusted, package]


def _install_container(manifest: Manifest, config: OperatorConfig) -> dict[str, Any]:
    index_url = config.index_url(manifest.spec.ml_service.package_registry_name)
    return {
        "name": "install-mlcomponent", "image": manifest.spec.image.existing_image_name,
        "command": pip_install_command(index_url, config.package),
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PIP_CONFIG_FILE", "value": "/dev/null"}],
        "volumeMounts": [{"name": "mlcomponent", "mountPath": PACKAGE_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _security(config),
        "resources": _limits("1", "512Mi", "100m", "256Mi"),
    }


def serve_command() -> list[str]:
    """``mlcomponent serve`` as the pod runs it; one line per flag."""
    return [
        PYTHON, "-m", "mlcomponent", "serve", f"{CONFIG_DIR}/mlcomponent.yaml",
        "--module-root", ".",  # the image's working directory: pythonPath is relative to it
        "--host", "0.0.0.0",
        *(arg for port in PORTS for arg in (port.flag, str(port.container))),
        "--boxes", f"{CONFIG_DIR}/boxes.yaml",
        "--data-root", DATA_DIR,
        flag("grace_period"), str(GRACE_SECONDS),
        flag("timeout"), str(DEADLINE_SECONDS),
        "--hide-errors",  # end users calling someone else's module see the exception type, not its internals
        "--log-format", "json",
    ]


def _probes() -> dict[str, Any]:
    live = {"httpGet": {"path": "/v2/health/live", "port": HTTP.name}}
    return {
        "startupProbe": {**live, "periodSeconds": 2, "failureThreshold": 150, "timeoutSeconds": 2},
        "livenessProbe": {**live, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 2},
        # ready only once the docstring's Example ran (the warm-up); not ready again on SIGTERM
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": HTTP.name}, "periodSeconds": 2,
                           "failureThreshold": 2, "timeoutSeconds": 2},
    }


def _pre_stop() -> dict[str, Any]:
    """Keep serving while the endpoints controller and kube-proxy drop the terminating pod.

    Kubernetes 1.20 has no ``sleep`` handler, and the image may have no shell: the
    image's own python3 sleeps.
    """
    return {"preStop": {"exec": {"command": [PYTHON, "-I", "-c", f"import time; time.sleep({PRESTOP_SECONDS})"]}}}


def _main_container(manifest: Manifest, config: OperatorConfig, box_mounts: list[dict[str, Any]],
                    model_content: str | None) -> dict[str, Any]:
    copied = [b for b in manifest.spec.connected_boxes if b.copy_s3_box is not None]
    main: dict[str, Any] = {
        "name": "inference", "image": manifest.spec.image.existing_image_name,
        "command": serve_command(),
        "ports": [{"name": port.name, "containerPort": port.container, "protocol": "TCP"} for port in PORTS],
        "env": [{"name": "PYTHONPATH", "value": PACKAGE_DIR}, {"name": "HOME", "value": "/tmp"},
                *({"name": v.name, "value": v.value} for v in manifest.spec.env),
                *(item for box in copied for item in _credentials(box.s3_box_name, config)),
                # every replica signs and checks download links with the same key
                {"name": FILES_SECRET_ENV, "valueFrom": {"secretKeyRef": {"name": files_secret_name(manifest),
                                                                          "key": FILES_SECRET_KEY}}},
                *([{"name": MODEL_VERSION_ENV, "value": model_content}] if model_content else [])],
        "resources": _resources(manifest),
        "volumeMounts": [{"name": "mlcomponent", "mountPath": PACKAGE_DIR, "readOnly": True},
                         {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR},
                         {"name": "files", "mountPath": manifest.inference.file_exchange.inference_files_path},
                         {"name": "tmp", "mountPath": "/tmp"},
                         *box_mounts],
        **_probes(),
        "lifecycle": _pre_stop(),
        "securityContext": _security(config),
    }
    if not main["resources"]:
        del main["resources"]
    return main


def _pod_spec(manifest: Manifest, config: OperatorConfig, model_content: str | None) -> dict[str, Any]:
    box_volumes, box_mounts = _box_volumes(manifest, config)
    syncs = [] if config.s3_mounts else [_sync_container(manifest, box, config) for box in _mounted_boxes(manifest)]
    return {
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + GRACE_SECONDS + 5,
        # The sandbox is PID 1, not our python3: a PID 1 ignores SIGTERM unless it handles it,
        # and pip (install), sync-box and a server still starting do not, so a pod deleted
        # while it starts would wait out the whole grace period.
        "shareProcessNamespace": True,
        "securityContext": {"runAsNonRoot": True, "runAsUser": config.run_as_user,
                            "runAsGroup": config.run_as_user, "fsGroup": config.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_install_container(manifest, config), *syncs],
        "containers": [_main_container(manifest, config, box_mounts, model_content)],
        "volumes": [
            {"name": "mlcomponent", "emptyDir": {}},
            {"name": "config", "configMap": {"name": f"{manifest.metadata.name}-manifest"}},
            {"name": "data", "emptyDir": {}},
            {"name": "files", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            *box_volumes,
        ],
    }


def deployment(manifest: Manifest, config: OperatorConfig, model_content: str | None = None) -> dict[str, Any]:
    """``model_content``: the model's content hash; a new one rolls the pods, which sync the new model."""
    name = manifest.metadata.name
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(HTTP.container),
                   "prometheus.io/path": "/metrics", **({MODEL_CONTENT: model_content} if model_content else {})}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(manifest, name),
        "spec": {
            # No `replicas`: the Deployment's default (1) or the platform's autoscaler owns it.
            "selector": {"matchLabels": selector(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels(manifest), "annotations": annotations},
                         "spec": _pod_spec(manifest, config, model_content)},
        },
    }


def service(manifest: Manifest) -> dict[str, Any]:
    ports = [{"name": port.name, "port": port.service, "targetPort": port.name, "protocol": "TCP",
              **({"appProtocol": port.app_protocol} if port.app_protocol else {})} for port in PORTS]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(manifest, manifest.metadata.name),
            "spec": {"type": "ClusterIP", "selector": selector(manifest.metadata.name), "ports": ports}}


def render(manifest: Manifest, config: OperatorConfig | None = None,
           model_content: str | None = None) -> list[dict[str, Any]]:
    """Every object, in the order to apply them (the files Secret is the operator's: random, made once)."""
    config = config or OperatorConfig.load(None)
    return [config_map(manifest, config), *claims(manifest, config), deployment(manifest, config, model_content),
            service(manifest)]


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Multi-line strings as readable `|` blocks; never anchors and aliases (`&id001`, `*id001`).

    Objects share sub-dicts (labels, security contexts); an alias in YAML that people
    read and `kubectl apply` is a puzzle, and some tools refuse it.
    """

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return str(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False))


def service_url(manifest: Manifest) -> str:
    namespace = manifest.metadata.namespace or "default"
    return f"http://{manifest.metadata.name}.{namespace}.svc.cluster.local/v2/models/{manifest.metadata.name}"
