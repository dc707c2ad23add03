"""What `kubectl apply -f deploy/` installs: the CRD, RBAC and the operator's Deployment."""

from __future__ import annotations

from typing import Any

import yaml

from mlcomponent import __version__
from mlcomponent.kubernetes.crd import PLURAL, crd
from mlcomponent.manifest import API_GROUP

NAMESPACE = "mlcomponent-system"
NAME = "mlcomponent-operator"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "mlcomponent"}
DEFAULT_CONFIG = {
    "registries": {"python-package-registry": "https://pypi.org/simple"},
    "defaultIndexUrl": None,
    "s3Endpoint": "https://s3.example.org",
    "boxSecret": "{box}-s3",
}

# Least privilege: what reconcile and the Deployment watcher touch, nothing more.
RULES: list[dict[str, Any]] = [
    {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["configmaps", "services", "persistentvolumeclaims"],
     "verbs": ["get", "list", "watch", "create", "patch", "update"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf discovers the resources it serves and the namespaces it watches
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
]


def objects(index_url: str = "https://pypi.org/simple", package: str = f"mlcomponent[kubernetes]=={__version__}",
            image: str = "python:3.11-slim") -> list[dict[str, Any]]:
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": LABELS}
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                "runAsUser": 1000, "readOnlyRootFilesystem": True}
    volumes = [{"name": "packages", "mountPath": "/opt/mlcomponent"}, {"name": "tmp", "mountPath": "/tmp"}]
    operator_deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one operator at a time (standalone, no peering)
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": [{
                        "name": "install", "image": image,
                        "command": ["python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                                    "--target", "/opt/mlcomponent", "--index-url", index_url, package],
                        "env": [{"name": "HOME", "value": "/tmp"}],
                        "volumeMounts": volumes, "securityContext": security,
                        "resources": {"limits": {"cpu": "1", "memory": "512Mi"},
                                      "requests": {"cpu": "100m", "memory": "256Mi"}},
                    }],
                    "containers": [{
                        "name": "operator", "image": image,
                        "command": ["python", "-m", "mlcomponent", "operator", "--config",
                                    "/etc/mlcomponent-operator/config.yaml"],
                        "env": [{"name": "PYTHONPATH", "value": "/opt/mlcomponent"}, {"name": "HOME", "value": "/tmp"}],
                        "ports": [{"name": "health", "containerPort": 8080, "protocol": "TCP"}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 20},
                        "volumeMounts": [*volumes, {"name": "config", "mountPath": "/etc/mlcomponent-operator",
                                                    "readOnly": True}],
                        "securityContext": security,
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                                      "requests": {"cpu": "50m", "memory": "128Mi"}},
                    }],
                    "volumes": [{"name": "packages", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                                {"name": "config", "configMap": {"name": NAME}}],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": LABELS}},
        crd(),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME, "labels": LABELS},
         "rules": RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME, "labels": LABELS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
         "data": {"config.yaml": yaml.safe_dump(DEFAULT_CONFIG, sort_keys=False)}},
        operator_deployment,
    ]
