"""`mlcomponent deploy` and `status`: the MLComponent applied to the current context, and how it is doing.

``view`` is a pure function of the objects the API server returns (the component, its
pods, their events), so what ``status`` prints is tested without a cluster; ``Cluster``
holds the few calls that read and apply them. The operator does the work: deploy only
applies the manifest (server-side apply) and watches the Ready condition it writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlcomponent.manifest import API_GROUP

VERSION, PLURAL, KIND = "v1", "mlcomponents", "MLComponent"
FIELD_MANAGER = "mlcomponent-cli"
MODEL_CONTENT = "unified-platform.cs.hse.ru/model-content"  # as kubernetes/render.py writes it
INSTALL_HINT = "mlcomponent install | kubectl apply -f -"
# Ready=False reasons that waiting does not fix (the operator's and status.py's); the rest are on the way
FAILED = {"InvalidSpec", "UnknownPackageRegistry", "ImagePullFailed", "ContainerConfigError", "PythonNotFound",
          "InstallFailed", "BoxSyncFailed", "InitContainerFailed", "ServeFailed", "Unschedulable",
          "ProgressDeadlineExceeded"}


class DeployError(RuntimeError):
    """One line (the condition's message may follow on more): what failed and what to do."""


def ready_condition(component: dict[str, Any]) -> dict[str, Any]:
    conditions = (component.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _pod_line(pod: dict[str, Any]) -> str:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    waiting = [s["state"]["waiting"].get("reason", "") for s in
               [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
               if (s.get("state") or {}).get("waiting")]
    phase = "Terminating" if meta.get("deletionTimestamp") else status.get("phase", "Pending")
    state = "ready" if ready else ", ".join(w for w in dict.fromkeys([phase, *waiting]) if w)
    content = ((meta.get("annotations") or {}).get(MODEL_CONTENT)) or "-"
    return f"  pod {meta.get('name', '?')}: {state}; model {content}"


def view(component: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    """What `status` prints: the Ready condition, the model content, each replica and the last events."""
    meta = component.get("metadata") or {}
    status = component.get("status") or {}
    condition = ready_condition(component)
    lines = [f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}: Ready={condition.get('status', 'Unknown')}"
             f" ({condition.get('reason', 'no status yet: is the operator running?')})"]
    if condition.get("message"):
        lines += [f"  {line}" for line in str(condition["message"]).splitlines()]
    if status.get("url"):
        lines.append(f"  url: {status['url']}")
    if status.get("modelContent"):
        lines.append(f"  model content: {status['modelContent']}")
    lines += [_pod_line(p) for p in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name")))]
    for event in events[-5:]:
        lines.append(f"  event {event.get('type', '')} {(event.get('involvedObject') or {}).get('name', '')}: "
                     f"{event.get('reason', '')}: {' '.join(str(event.get('message', '')).split())}")
    return lines


def summary(component: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """The live status line: the condition and each pod's state, on one line."""
    condition = ready_condition(component)
    states = "; ".join(_pod_line(p).strip().removeprefix("pod ") for p in pods)
    return f"Ready={condition.get('status', 'Unknown')} {condition.get('reason', '(no status yet)')}" + (
        f" | {states}" if states else "")


def outcome(component: dict[str, Any], generation: int) -> tuple[bool, str] | None:
    """(True, message) when Ready for ``generation``, (False, message) when failed; None to keep waiting."""
    condition = ready_condition(component)
    if condition.get("observedGeneration", (component.get("status") or {}).get("observedGeneration", 0)) < generation:
        return None
    if condition.get("status") == "True":
        return True, str(condition.get("message", "ready"))
    if condition.get("reason") in FAILED:
        return False, f"{condition['reason']}: {condition.get('message', '')}"
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


@dataclass
class Cluster:
    """The calls deploy and status make, through the kubernetes client of the current context."""

    api: Any

    @classmethod
    def connect(cls, context: str | None = None) -> Cluster:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=context)
        except (config.ConfigException, OSError, ValueError, TypeError) as error:
            raise DeployError(f"no cluster to deploy to: cannot load a kubeconfig ({_one_line(error)}); set "
                              "KUBECONFIG or `kubectl config use-context`") from None
        api = client.ApiClient()
        if not api.configuration.verify_ssl:  # the kubeconfig's insecure-skip-tls-verify: chosen, as kubectl takes it
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return cls(api)

    def default_namespace(self) -> str:
        from kubernetes import config

        try:
            _, active = config.list_kube_config_contexts()
            return str((active.get("context") or {}).get("namespace") or "default")
        except (config.ConfigException, OSError, ValueError, TypeError):
            return "default"

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call()
        except ApiException as error:
            if error.status == 404 and '"kind":"Status"' not in str(error.body).replace(" ", ""):
                raise DeployError(f"the cluster has no MLComponent type (CRD not installed); install the operator: "
                                  f"{INSTALL_HINT}") from None
            raise
        except (HTTPError, OSError) as error:
            host = self.api.configuration.host
            raise DeployError(f"cannot reach the cluster at {host} ({what}: {type(error).__name__}); check "
                              "KUBECONFIG / the current context and that the cluster is up") from None

    def apply(self, data: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Server-side apply as ``mlcomponent-cli``; what the manifest leaves out is left as it is."""
        import json

        from kubernetes.client.rest import ApiException
        from kubernetes.dynamic import DynamicClient
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        name = data["metadata"]["name"]
        body = {**data, "metadata": {**data["metadata"], "namespace": namespace}}
        try:
            resource = self._call("discovery", lambda: DynamicClient(self.api).resources.get(
                api_version=f"{API_GROUP}/{VERSION}", kind=KIND))
            result = self._call("apply", lambda: resource.server_side_apply(
                body=body, name=name, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True))
        except ResourceNotFoundError:
            raise DeployError(f"the cluster has no MLComponent type (CRD not installed); install the operator: "
                              f"{INSTALL_HINT}") from None
        except ApiException as error:
            detail = error.reason
            try:
                detail = json.loads(error.body).get("message", detail)
            except (TypeError, ValueError):
                pass
            if error.status == 404:
                raise DeployError(f"namespace {namespace!r} does not exist; create it (kubectl create namespace "
                                  f"{namespace}) or set metadata.namespace") from None
            raise DeployError(f"the cluster refused MLComponent {name}: {error.status} {detail}") from None
        return dict(result.to_dict())

    def component(self, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            return dict(self._call("read", lambda: client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                API_GROUP, VERSION, namespace, PLURAL, name)))
        except ApiException as error:
            if error.status == 404:
                return None
            raise DeployError(f"reading MLComponent {namespace}/{name}: {error.status} {error.reason}") from None

    def pods(self, name: str, namespace: str) -> list[dict[str, Any]]:
        from kubernetes import client

        listed = self._call("pods", lambda: client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=f"app.kubernetes.io/instance={name}"))
        return [self.api.sanitize_for_serialization(p) for p in listed.items]

    def events(self, pods: list[dict[str, Any]], name: str, namespace: str) -> list[dict[str, Any]]:
        from kubernetes import client

        names = {name, *((p.get("metadata") or {}).get("name") for p in pods)}
        listed = self._call("events", lambda: client.CoreV1Api(self.api).list_namespaced_event(namespace))
        found = [self.api.sanitize_for_serialization(e) for e in listed.items]
        found = [e for e in found if (e.get("involvedObject") or {}).get("name") in names]
        return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def wait_ready(cluster: Cluster, name: str, namespace: str, generation: int, timeout: float,
               show: Callable[[str], None], period: float = 1.0,
               clock: Callable[[], float] = time.monotonic, pause: Callable[[float], None] = time.sleep) -> str:
    """Until Ready (returns its message) or failed or ``timeout`` (DeployError); ``show`` gets each new line."""
    deadline = clock() + timeout
    last, seen_events = "", set[Any]()
    component: dict[str, Any] = {}
    while True:
        component = cluster.component(name, namespace) or {}
        pods = cluster.pods(name, namespace)
        line = summary(component, pods)
        if line != last:
            show(line)
            last = line
        for event in cluster.events(pods, name, namespace):
            uid = (event.get("metadata") or {}).get("uid")  # once each, however often it repeats
            if uid not in seen_events:
                seen_events.add(uid)
                show(f"  event {(event.get('involvedObject') or {}).get('name', '')}: {event.get('reason', '')}: "
                     f"{' '.join(str(event.get('message', '')).split())}")
        result = outcome(component, generation)
        if result is not None:
            ok, message = result
            if ok:
                return message
            raise DeployError(f"{namespace}/{name} failed: {message}")
        if clock() > deadline:
            condition = ready_condition(component)
            why = (f"{condition.get('reason')}: {condition.get('message')}" if condition else
                   "the operator wrote no status (is it running? " + INSTALL_HINT + ")")
            raise DeployError(f"{namespace}/{name} not Ready after {timeout:.0f}s: {why}")
        pause(period)
