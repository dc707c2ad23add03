"""An MLComponent's Ready condition, from its Deployment and the container states of its pods.

Pure functions over the objects as the API server returns them (camelCase dicts), so
that every failure a kubelet reports is tested without one. A pod that fails says
why in the condition: the container, what the kubelet says (exit code, reason,
message) and the container's last log lines; never a silent CrashLoopBackOff.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

INSTALL_CONTAINER = "install-mlcomponent"
PULL = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
CONFIG = {"CreateContainerConfigError", "CreateContainerError"}
FAILING = PULL | CONFIG | {"CrashLoopBackOff", "RunContainerError", "StartError"}
MAX_LINE = 300  # a log line; 10 of them and the kubelet's account keep a condition under 5 kB


class Readiness(NamedTuple):
    status: str  # "True" or "False"
    reason: str
    message: str


@dataclass(frozen=True)
class LogRequest:
    pod: str
    container: str
    previous: bool  # the logs of the run before this one (the container is waiting to restart)


Logs = Callable[[LogRequest], list[str]]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(state: Readiness, generation: int | None, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The condition; its lastTransitionTime moves only when its status does."""
    current = current or {}
    since = current.get("lastTransitionTime") if current.get("status") == state.status else None
    condition: dict[str, Any] = {"type": "Ready", "status": state.status, "reason": state.reason,
                                 "message": state.message, "lastTransitionTime": since or _now()}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def deployment_readiness(deployment: dict[str, Any]) -> Readiness:
    """From a Deployment's status alone."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < generation:
        return Readiness("False", "RolloutPending", "the Deployment controller has not seen the latest spec yet")
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Readiness("False", "ProgressDeadlineExceeded", progressing.get("message", "the rollout is stuck"))
    if wanted == 0:
        return Readiness("False", "ScaledToZero", "the Deployment has 0 replicas")
    if updated >= wanted and available >= wanted and conditions.get("Available", {}).get("status") == "True":
        return Readiness("True", "DeploymentAvailable", f"{available}/{wanted} replicas available")
    return Readiness("False", "RolloutInProgress", f"{available}/{wanted} replicas available, {updated} updated")


@dataclass(frozen=True)
class Failure:
    """One container that failed, as its status says."""

    container: str
    init: bool
    waiting: str  # the waiting reason, if any (CrashLoopBackOff, ErrImagePull, ...)
    what: str  # the kubelet's account: exit code, reason, message
    logs: bool | None  # whose logs tell more: None (it never started), False (this run), True (the last run)

    @property
    def reason(self) -> str:
        if self.waiting in PULL:
            return "ImagePullFailed"
        if self.waiting in CONFIG:
            return "ContainerConfigError"
        if "executable file not found" in self.what and "python3" in self.what:
            return "PythonNotFound"
        if self.container == INSTALL_CONTAINER:
            return "InstallFailed"
        if self.init and self.container.startswith("sync-"):
            return "BoxSyncFailed"
        return "InitContainerFailed" if self.init else "ServeFailed"


def _exit(terminated: dict[str, Any]) -> str:
    text = f"exited with code {terminated.get('exitCode')}"
    if terminated.get("reason"):
        text += f" ({terminated['reason']})"
    if (terminated.get("message") or "").strip():
        text += f": {terminated['message'].strip()}"
    return text


def _logs_of(terminated: dict[str, Any], previous: bool) -> bool | None:
    return None if terminated.get("reason") == "StartError" else previous


def container_failure(status: dict[str, Any], init: bool) -> Failure | None:
    """Why this container is failing, or None when it is not."""
    name = status.get("name", "?")
    state = status.get("state") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    reason = waiting.get("reason", "")
    if terminated and terminated.get("exitCode", 0) != 0:
        return Failure(name, init, "", _exit(terminated), _logs_of(terminated, False))
    if reason in FAILING:
        if last and last.get("exitCode", 0) != 0:
            return Failure(name, init, reason, f"{_exit(last)}; {reason}", _logs_of(last, True))
        return Failure(name, init, reason, f"{reason}: {waiting.get('message', '')}".rstrip(": "), None)
    if last and last.get("exitCode", 0) != 0 and "running" in state and not status.get("ready"):
        return Failure(name, init, "", f"restarted after it {_exit(last)}", _logs_of(last, True))
    return None


def _unschedulable(pod: dict[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return str(condition.get("message", "no node can run it"))
    return None


def _clip(line: str, limit: int = MAX_LINE) -> str:
    return line if len(line) <= limit else line[:limit] + "…"


def pod_problem(pod: dict[str, Any], logs: Logs) -> Readiness | None:
    """The first failing container of a pod (init containers first), with its last log lines."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    pending = _unschedulable(pod)
    if pending is not None:
        return Readiness("False", "Unschedulable", f"pod {name}: {pending}")
    statuses = [(s, True) for s in status.get("initContainerStatuses") or []]
    statuses += [(s, False) for s in status.get("containerStatuses") or []]
    for container, init in statuses:
        failure = container_failure(container, init)
        if failure is None:
            continue
        kind = "init container" if init else "container"
        message = f"pod {name}: {kind} {failure.container} {_clip(failure.what, 3 * MAX_LINE)}"
        if failure.reason == "PythonNotFound":
            message += "; mlcomponent runs with the image's own python3 (3.11 or newer), which must be on its PATH"
        lines = logs(LogRequest(name, failure.container, failure.logs)) if failure.logs is not None else []
        if lines:
            message += "\nlast log lines:\n" + "\n".join(_clip(line) for line in lines)
        return Readiness("False", failure.reason, message)
    return None


def _newest_first(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return sorted(live, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")), reverse=True)


def readiness(deployment: dict[str, Any], pods: Iterable[dict[str, Any]], logs: Logs) -> Readiness:
    """A failing pod says why first; otherwise the Deployment's rollout decides."""
    for pod in _newest_first(pods):
        problem = pod_problem(pod, logs)
        if problem is not None:
            return problem
    return deployment_readiness(deployment)
