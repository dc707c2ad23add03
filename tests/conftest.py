"""Shared fixtures: the fixture modules served once per session, a real S3 endpoint (moto in server mode,
its own process); the "not run" summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.checkout import Checkout, copy_worktree, remove_in_background
from tests.support import Server, free_port, serve_fixture, stop_group, wait_ready, wait_until_live

# The suite runs in two lanes (pytest-xdist, ``-n 2`` in pyproject.toml). A lane takes a whole file
# (module fixtures start once) or one of these groups; the groups go first, longest first, so that the
# node e2es (about four minutes, mostly waiting for pods) run beside everything else.
LANE_GROUPS = {
    "tests/test_kubernetes_node.py": "node",  # one node per machine (node.sh)
    "tests/test_ship_node.py": "node",
    "tests/test_docs.py": "readme",  # the README's first command makes its .venv once
    "tests/test_cli_mistakes.py": "readme",
}
NOT_RUN = "not run, because "  # how tests.support.not_run words a skip
S3_ENV = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def _lane(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return LANE_GROUPS.get(path, path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The grouped files first, in LANE_GROUPS' order; the rest as collected (a stable sort)."""
    order = {group: rank for rank, group in enumerate(dict.fromkeys(LANE_GROUPS.values()))}
    items.sort(key=lambda item: order.get(_lane(item.nodeid), len(order)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling, a scope being a file or one of LANE_GROUPS (with pyproject's
    ``--dist loadscope``; another ``--dist`` on the command line gets xdist's own)."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return _lane(nodeid)

    return Lanes(config, log)


@pytest.fixture(scope="session")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``echo.inference`` served with the default flags, once for every test that needs nothing else of it.

    Tests that read its log or metrics must not count on being alone; a test that needs a
    flag or a fresh process serves its own.
    """
    with serve_fixture(tmp_path_factory.mktemp("echo"), "echo.inference") as server:
        yield server


@pytest.fixture(scope="session")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``spec_full.inference`` (a function that declares inputs, outputs and parameters), default flags,
    served once: an undeclared name is refused, reserved ones are not."""
    with serve_fixture(tmp_path_factory.mktemp("spec-full"), "spec_full.inference") as server:
        yield server


def boxes_file(folder: Path, endpoint: str, *names: str, env_names: bool = True) -> Path:
    """``folder/boxes.yaml``: each box name an S3 bucket of the same name at ``endpoint`` (credentials from
    BOX_KEY and BOX_SECRET unless ``env_names`` is off)."""
    lines = ["boxes:"]
    for name in names:
        lines += [f"  {name}:", "    s3:", f"      endpoint: {endpoint}", "      region: us-east-1"]
        if env_names:
            lines += ["      accessKeyEnv: BOX_KEY", "      secretKeyEnv: BOX_SECRET"]
    path = folder / "boxes.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class S3Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Any = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, name: str) -> str:
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if name not in existing:
            self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def boxes_file(self, folder: Path, *names: str, env_names: bool = True) -> Path:
        """A --boxes file mapping each box name to a bucket of the same name here."""
        for name in names:
            self.bucket(name)
        return boxes_file(folder, self.url, *names, env_names=env_names)

    @property
    def server_env(self) -> dict[str, str]:
        return {"BOX_KEY": S3_ENV["AWS_ACCESS_KEY_ID"], "BOX_SECRET": S3_ENV["AWS_SECRET_ACCESS_KEY"]}


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """moto's S3 server on a free loopback port, started for the test session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **S3_ENV})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process, log, path="/moto-api/")
        yield S3Endpoint(url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def fresh_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """The working tree as a fresh clone of it has it: tracked and new files, nothing ignored
    (no .venv, no trained models), and no ../shared beside it. Removed at the end."""
    root = copy_worktree(tmp_path_factory.mktemp("clone") / "mlcomponent")
    try:
        yield Checkout(root)
    finally:
        remove_in_background(root)


@pytest.fixture(scope="session")
def readme_first_command(fresh_checkout: Checkout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The README's first command, ``./scripts/serve-example.sh``, run in the fresh checkout.

    It makes the checkout's .venv exactly as a new user gets it (the ``examples`` extra only)
    and serves the iris example; the README's tour runs against it, in that .venv.
    """
    port = free_port()
    log = tmp_path_factory.mktemp("readme") / "serve-example.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(["./scripts/serve-example.sh"], cwd=fresh_checkout.root, stdout=sink,
                                   stderr=subprocess.STDOUT, env=fresh_checkout.env(PORT=str(port)),
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process, log, deadline_s=900)  # a fresh .venv: pip installs the examples' packages
        server = Server(url, process, log, fresh_checkout.root / "examples" / "iris" / "data")
        wait_ready(server)
        yield server
    finally:
        stop_group(process)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # the outermost wrapper: its code after yield runs last
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """List, at the very end, every test not run because this machine lacks something (tests.support.not_run)."""
    yield  # pytest's own summaries first, the short test summary included
    missing = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        message = message.removeprefix("Skipped: ")
        if message.startswith(NOT_RUN):
            missing.append((report.nodeid, message.removeprefix(NOT_RUN)))
    if not missing:
        return
    terminalreporter.write_sep("=", f"{len(missing)} test(s) not run: this machine lacks what they need", yellow=True)
    for nodeid, reason in missing:
        terminalreporter.write_line(f"NOT RUN {nodeid}: because {reason}")
    terminalreporter.write_line("(scripts/test.sh installs these as root with apt; on CI, with CI set, they fail)")
