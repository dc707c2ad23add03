"""The README's runnable blocks run against the served example (started by the README's first command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, Server, free_port, wait_ready, wait_until_live

BLOCK = re.compile(r"^```(bash|python) runnable\n(.*?)^```", re.M | re.S)
README = (ROOT / "README.md").read_text()
BLOCKS = BLOCK.findall(README)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("readme") / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([str(ROOT / "scripts" / "serve-example.sh")], cwd=ROOT, stdout=sink,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PORT": str(port)},
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(url, process, log, deadline_s=600)
        server = Server(url, process, log, ROOT / "examples" / "iris" / "data")
        wait_ready(server)
        yield server
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_the_readme_has_runnable_blocks_for_each_step() -> None:
    text = "\n".join(body for _, body in BLOCKS)
    for command in ("mlcomponent validate", "mlcomponent infer", "curl", "Client(", "mlcomponent init",
                    "mlcomponent render"):
        assert command in text, f"the README tour lost its runnable `{command}` step"


@pytest.mark.parametrize(("language", "body"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(example: Server, language: str, body: str) -> None:
    code = body.replace("http://127.0.0.1:8080", example.url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"README block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    if "Client(" in code:
        assert "setosa" in result.stdout and "virginica" in result.stdout
    if "mlcomponent infer" in code:
        assert "label" in result.stdout and "setosa" in result.stdout
