"""The README, followed as a new user follows it: in a fresh copy of the repository, right after
its first command (``./scripts/serve-example.sh``), in the .venv that command made.

Every block marked ``runnable`` runs in a terminal with that .venv activated; the examples
table's "serve it" commands are run as written (on free ports) for the blocks that call them.
Nothing here uses the test run's own virtualenv, so the tour fails here when it fails for a
new user (a package the first command does not install, a port the tour leaves busy, ...).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checkout import Checkout
from tests.support import ROOT, Server, free_port, not_run, stop_group, wait_ready, wait_until_live

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(bash|python) runnable\n(.*?)^```", README, re.M | re.S)
# The examples table: | [`examples/...`](...) | what it shows | `serve command` |
TABLE = re.findall(r"^\| \[`(examples/[^`]+)`\]\([^)]*\) \| [^|]* \| `([^`]+)` \|$", README, re.M)
TOUR_URL = "http://127.0.0.1:8080"
# What each kind of block must print, besides exiting 0 (a block matches by a piece of its code).
EXPECTED = {
    "Client(": ["setosa", "virginica"],
    f"mlcomponent infer {TOUR_URL}": ["label", "setosa"],
    "/v2/models/iris-classifier/infer": ['"label"'],
    "mlcomponent init": ["1 passed", "docstring spec OK"],
    "mlcomponent render": ["kind: Deployment", "kind: Service"],
    "table=@": ["predictions", "examples/iris/data/out/"],
    "/v2/models/digits/infer": ['"label"'],
    "for manifest in": ["(MLComponent iris-classifier)", "(MLComponent iris-table)", "(MLComponent digits)"],
}


def urls_in(code: str) -> set[str]:
    return set(re.findall(r"http://127\.0\.0\.1:\d+", code))


def test_the_readme_has_runnable_blocks_for_each_step() -> None:
    text = "\n".join(body for _, body in BLOCKS)
    for command in ("mlcomponent validate", "mlcomponent infer", "curl", "Client(", "mlcomponent init",
                    "python -m pytest", "mlcomponent render"):
        assert command in text, f"the README tour lost its runnable `{command}` step"
    for needle in EXPECTED:
        assert needle in text, f"no runnable block has {needle!r} any more; update EXPECTED"


def test_the_first_command_is_quiet_and_serves(readme_first_command: Server) -> None:
    """It set up a fresh .venv, trained and served with no banner, warning block or traceback."""
    output = readme_first_command.output()
    assert "Editable installation" not in output and "!!" not in output, output
    assert "Traceback" not in output, output
    assert f"serving iris-classifier on {readme_first_command.url}" in output, output


def test_the_examples_table_gives_each_example_its_own_port() -> None:
    assert [example for example, _ in TABLE] == ["examples/iris", "examples/iris/table.yaml", "examples/digits"]
    assert TABLE[0][1] == "./scripts/serve-example.sh"
    ports = [re.search(r"--port (\d+)", command) for _, command in TABLE[1:]]
    assert all(ports) and len({m.group(1) for m in ports if m} | {"8080"}) == len(TABLE), TABLE


@pytest.fixture(scope="module")
def examples_served(fresh_checkout: Checkout, readme_first_command: Server,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """README URL -> the URL of the service the examples table's command for it started."""
    urls = {TOUR_URL: readme_first_command.url}
    started = []
    try:
        for example, command in TABLE[1:]:  # all started first, then waited for: they start side by side
            readme_port = re.search(r"--port (\d+)", command)
            assert readme_port, command
            port = free_port()
            log = tmp_path_factory.mktemp("example") / "serve.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    ["bash", "-euo", "pipefail", "-c",
                     ". .venv/bin/activate\n" + command.replace(readme_port.group(0), f"--port {port}")],
                    cwd=fresh_checkout.root, stdout=sink, stderr=subprocess.STDOUT, env=fresh_checkout.env(),
                    start_new_session=True)
            started.append((example, readme_port.group(1), f"http://127.0.0.1:{port}", process, log))
        for example, readme_port_number, url, process, log in started:
            wait_until_live(url, process, log, deadline_s=300)
            wait_ready(Server(url, process, log, fresh_checkout.root / Path(example).parent / "data"))
            urls[f"http://127.0.0.1:{readme_port_number}"] = url
        yield urls
    finally:
        for _, _, _, process, _ in started:
            stop_group(process)


@pytest.mark.parametrize(("language", "body"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(request: pytest.FixtureRequest, fresh_checkout: Checkout, readme_first_command: Server,
                           language: str, body: str) -> None:
    if re.search(r"^curl ", body, re.M) and shutil.which("curl") is None:
        not_run("curl is not installed (scripts/test.sh installs it as root: apt-get install --no-install-recommends curl)")
    wanted = urls_in(body)
    urls = request.getfixturevalue("examples_served") if wanted - {TOUR_URL} else {TOUR_URL: readme_first_command.url}
    code = body
    for readme_url in wanted:
        assert readme_url in urls, f"the block calls {readme_url}, which nothing in the README serves"
        code = code.replace(readme_url, urls[readme_url])
    if language == "bash":
        result = fresh_checkout.bash(code)
    else:
        result = subprocess.run([str(fresh_checkout.venv / "bin" / "python"), "-c", code], cwd=fresh_checkout.root,
                                capture_output=True, text=True, env=fresh_checkout.env(), timeout=120)
    report = f"README block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report
    for needle, expected in EXPECTED.items():
        if needle in body:
            for text in expected:
                assert text in result.stdout, f"{text!r} missing from the output\n{report}"


def test_following_the_readme_leaves_no_untracked_files(fresh_checkout: Checkout) -> None:
    """Run after the blocks: whatever they wrote in the repository is ignored by git (data/, .venv)."""
    written = [str(path.relative_to(fresh_checkout.root)) for path in fresh_checkout.root.rglob("*")
               if path.is_file() and ".venv" not in path.parts]
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    new = sorted(set(written) - set(listed))
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(new),
                             capture_output=True, text=True).stdout.splitlines()
    assert any(name.startswith("examples/iris/data/") for name in new), "the tour wrote nothing? (it trains a model)"
    assert sorted(set(new) - set(ignored)) == []
