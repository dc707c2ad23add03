"""The Ready condition from pods as a kubelet reports them (the shapes node.sh's kubelet v1.20 wrote)."""

from __future__ import annotations

from typing import Any

import pytest

from mlcomponent.kubernetes.status import LogRequest, Readiness, readiness, ready_condition

AVAILABLE = {"metadata": {"generation": 2}, "spec": {"replicas": 1},
             "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1,
                        "conditions": [{"type": "Available", "status": "True"}]}}
ROLLING = {"metadata": {"generation": 2}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 0}}
START_ERROR = ('failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create '
               'failed: unable to start container process: exec: "python3": executable file not found in $PATH: unknown')


def pod(name: str = "c-1", created: str = "2026-01-01T00:00:00Z", init: list[dict[str, Any]] | None = None,
        main: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"initContainerStatuses": init or [], "containerStatuses": main or [], **status}}


def container(name: str, ready: bool = False, state: dict[str, Any] | None = None,
              last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "ready": ready, "state": state or {"running": {}}, "lastState": last or {}}


INSTALLED = container("install-mlcomponent", True, {"terminated": {"exitCode": 0, "reason": "Completed"}})
SYNCED = container("sync-model-box", True, {"terminated": {"exitCode": 0, "reason": "Completed"}})


class Logs:
    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        self.asked: list[LogRequest] = []

    def __call__(self, request: LogRequest) -> list[str]:
        self.asked.append(request)
        return self.lines


def test_a_healthy_pod_leaves_it_to_the_deployment() -> None:
    healthy = pod(init=[INSTALLED, SYNCED], main=[container("inference", True)])
    assert readiness(AVAILABLE, [healthy], Logs()) == Readiness("True", "DeploymentAvailable", "1/1 replicas available")
    warming = pod(init=[INSTALLED, SYNCED], main=[container("inference", False)])
    assert readiness(ROLLING, [warming], Logs()).reason == "RolloutInProgress"


def test_a_crash_looping_server_gives_its_exit_and_its_last_log_lines() -> None:
    crashed = container("inference", state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                        last={"terminated": {"exitCode": 1, "reason": "Error"}})
    logs = Logs("cannot start: cannot import module 'iris.nope'")
    state = readiness(ROLLING, [pod(init=[INSTALLED, SYNCED], main=[crashed])], logs)
    assert state.status == "False" and state.reason == "ServeFailed"
    assert state.message == ("pod c-1: container inference exited with code 1 (Error); CrashLoopBackOff\n"
                             "last log lines:\ncannot start: cannot import module 'iris.nope'")
    assert logs.asked == [LogRequest("c-1", "inference", previous=True)]


def test_a_server_restarting_after_a_crash_stays_failed_until_ready() -> None:
    restarted = container("inference", state={"running": {}}, last={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    state = readiness(AVAILABLE, [pod(init=[INSTALLED, SYNCED], main=[restarted])], Logs())
    assert (state.reason, state.message) == ("ServeFailed", "pod c-1: container inference restarted after it exited "
                                                            "with code 137 (OOMKilled)")
    restarted["ready"] = True
    assert readiness(AVAILABLE, [pod(init=[INSTALLED, SYNCED], main=[restarted])], Logs()).status == "True"


def test_an_image_without_python3_is_named_and_no_logs_are_asked_for() -> None:
    failed = container("install-mlcomponent", state={"terminated": {"exitCode": 128, "reason": "StartError",
                                                                    "message": START_ERROR}})
    logs = Logs()
    state = readiness(ROLLING, [pod(init=[failed], main=[container("inference", state={"waiting": {
        "reason": "PodInitializing"}})])], logs)
    assert state.reason == "PythonNotFound"
    assert state.message.startswith("pod c-1: init container install-mlcomponent exited with code 128 (StartError): ")
    assert '"python3": executable file not found' in state.message and "3.11 or newer" in state.message
    assert logs.asked == []  # a container that never started has none


@pytest.mark.parametrize(("name", "reason"), [("install-mlcomponent", "InstallFailed"),
                                              ("sync-model-box", "BoxSyncFailed")])
def test_a_failing_init_container_says_which_step_failed(name: str, reason: str) -> None:
    failed = container(name, state={"terminated": {"exitCode": 1, "reason": "Error"}})
    logs = Logs("ERROR: No matching distribution found for mlcomponent==0.1.0")
    state = readiness(ROLLING, [pod(init=[failed])], logs)
    assert state.reason == reason
    assert state.message.endswith("last log lines:\nERROR: No matching distribution found for mlcomponent==0.1.0")
    assert logs.asked == [LogRequest("c-1", name, previous=False)]


@pytest.mark.parametrize(("waiting", "reason"), [("ErrImageNeverPull", "ImagePullFailed"),
                                                 ("ImagePullBackOff", "ImagePullFailed"),
                                                 ("CreateContainerConfigError", "ContainerConfigError")])
def test_images_and_missing_secrets_are_reported(waiting: str, reason: str) -> None:
    stuck = container("install-mlcomponent", state={"waiting": {"reason": waiting, "message": 'secret "users-s3" not found'}})
    state = readiness(ROLLING, [pod(init=[stuck])], Logs())
    assert (state.reason, state.message) == (reason, f'pod c-1: init container install-mlcomponent {waiting}: '
                                                     'secret "users-s3" not found')


def test_an_unschedulable_pod_says_why() -> None:
    pending = pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                               "message": "0/1 nodes are available: 1 Insufficient cpu."}])
    assert readiness(ROLLING, [pending], Logs()) == Readiness("False", "Unschedulable",
                                                             "pod c-1: 0/1 nodes are available: 1 Insufficient cpu.")


def test_the_newest_pod_speaks_and_terminating_ones_do_not() -> None:
    crashed = container("inference", state={"terminated": {"exitCode": 2, "reason": "Error"}})
    old = pod("old", "2026-01-01T00:00:00Z", main=[crashed])
    new = pod("new", "2026-01-02T00:00:00Z", main=[crashed])
    assert readiness(ROLLING, [old, new], Logs()).message.startswith("pod new:")
    leaving = pod("leaving", "2026-01-03T00:00:00Z", main=[crashed])
    leaving["metadata"]["deletionTimestamp"] = "2026-01-03T00:00:05Z"
    assert readiness(AVAILABLE, [leaving], Logs()).status == "True"


def test_long_log_lines_are_clipped() -> None:
    crashed = container("inference", state={"terminated": {"exitCode": 1, "reason": "Error"}})
    state = readiness(ROLLING, [pod(main=[crashed])], Logs("x" * 5000, "y"))
    assert len(state.message) < 1000 and state.message.endswith("…\ny")


def test_the_transition_time_moves_only_with_the_status() -> None:
    before = {"type": "Ready", "status": "False", "reason": "RolloutInProgress", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    same = ready_condition(Readiness("False", "ServeFailed", "crashed"), 3, before)
    assert same["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same["observedGeneration"] == 3
    flipped = ready_condition(Readiness("True", "DeploymentAvailable", "1/1"), 3, before)
    assert flipped["lastTransitionTime"] != "2026-01-01T00:00:00Z"
