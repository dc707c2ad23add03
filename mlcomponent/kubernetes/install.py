"""What `mlcomponent install` prints (and `deploy/` holds): the CRD, RBAC, config and the operator.

The operator runs from its own image, built from the repository's ``Containerfile``
with mlcomponent installed from the platform's package index: nothing is installed
when the pod starts, and no public index is named anywhere. The pods the operator
creates install mlcomponent from the index that the configuration's ``registries``
name; there are none by default, so every component is refused until they are set.
"""

from __future__ import annotations

from typing import Any

import yaml

from mlcomponent import __version__
from mlcomponent.kubernetes.crd import PLURAL, crd
from mlcomponent.kubernetes.render import OperatorConfig, to_yaml
from mlcomponent.manifest import API_GROUP

NAMESPACE = "mlcomponent-system"
NAME = "mlcomponent-operator"
IMAGE = f"localhost/{NAME}:{__version__}"  # what docs/kubernetes.md builds; never pulled from a public registry
CONFIG_DIR = "/etc/mlcomponent-operator"
DEFAULT_REGISTRY = "python-package-registry"  # the spec example's packageRegistryName
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "mlcomponent"}
CONFIG_HEADER = """\
# The mlcomponent operator's configuration (docs/kubernetes.md).
# registries: packageRegistryName -> the package index (PEP 503 "simple" URL) that publishes
#   mlcomponent and its dependencies. A name that is not listed is refused (the component's
#   Ready condition says so): there is no public index by default.
# boxSecret: the Secret, in the component's namespace, holding a box's accessKey/secretKey.
"""

# Least privilege: what reconcile and the watchers touch, nothing more.
RULES: list[dict[str, Any]] = [
    {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["configmaps", "services", "persistentvolumeclaims"],
     "verbs": ["get", "list", "watch", "create", "patch", "update"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
    # the files Secret (created once, never updated) and the box credentials the model poll lists S3 with
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
    # why a component is not ready: its pods' container states and their last log lines
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf discovers the resources it serves and the namespaces it watches
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
]


def _meta(name: str = NAME, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def config_text(config: OperatorConfig) -> str:
    """The ConfigMap's config.yaml: every setting spelled out, under a header that explains the two that matter."""
    data = config.model_dump(by_alias=True, mode="json")
    return CONFIG_HEADER + str(yaml.safe_dump(data, sort_keys=False))


def rbac() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta(namespaced=False),
         "rules": RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": _meta(namespaced=False),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
    ]


def operator_container(image: str) -> dict[str, Any]:
    return {
        "name": "operator", "image": image,
        "command": ["mlcomponent", "operator", "--config", f"{CONFIG_DIR}/config.yaml"],
        # kopf names itself after the user, and uid 1000 need not have a passwd entry in the image
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "USER", "value": NAME}],
        "ports": [{"name": "health", "containerPort": 8080, "protocol": "TCP"}],
        # /healthz answers once kopf has started: ready, then kept alive
        # one Python process: a busy node (pods installing) may delay an answer past the 1 s default
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 5, "timeoutSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 20, "timeoutSeconds": 10,
                          "failureThreshold": 6},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "runAsUser": 1000, "readOnlyRootFilesystem": True},
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "128Mi"}},
    }


def operator_deployment(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one operator at a time (standalone, no peering)
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [operator_container(image)],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "config", "configMap": {"name": NAME}}],
                },
            },
        },
    }


def objects(image: str = IMAGE, config: OperatorConfig | None = None) -> list[dict[str, Any]]:
    """Everything, in the order to apply it."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NAMESPACE, namespaced=False)},
        crd(),
        *rbac(),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(),
         "data": {"config.yaml": config_text(config or OperatorConfig())}},
        operator_deployment(image),
    ]


def install_yaml(image: str = IMAGE, config: OperatorConfig | None = None, index_url: str | None = None) -> str:
    """``objects`` as YAML; ``index_url`` is the index of the spec's ``python-package-registry``."""
    config = config or OperatorConfig()
    if index_url:
        config = config.model_copy(update={"registries": {**config.registries, DEFAULT_REGISTRY: index_url}})
    return to_yaml(objects(image, config))
