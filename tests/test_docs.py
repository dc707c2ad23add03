"""The README and docs/*.md, followed as a new user follows them: in a fresh copy of the repository,
right after the README's first command (``./scripts/serve-example.sh``), in the .venv that command made.

Every block marked ``runnable`` (README and docs/*.md) runs in a terminal with that .venv activated;
the examples table's "serve it" commands, and the docs' ``bash serve`` blocks, are run as written (on
free ports) for the blocks that call them. In docs/*.md every ``bash`` or ``python`` block is marked:
``runnable``, ``serve`` (a service the other blocks call), or ``not-run`` (it needs what a test run
has not: a cluster, a registry, minutes of benchmarks; or it is a fragment of a function).
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
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
FENCE = r"^```(bash|python)( [^\n]*)?\n(.*?)^```"
BLOCKS = [(language, body) for language, _, body in re.findall(FENCE, README, re.M | re.S) if _ == " runnable"]
DOC_BLOCKS = [(name, language, (info or "").strip(), body) for name, text in DOCS.items()
              for language, info, body in re.findall(FENCE, text, re.M | re.S)]
# The docs' own services (``bash serve`` blocks): one `mlcomponent serve ... --port N` command each.
DOC_SERVE = [body.strip() for _, _, info, body in DOC_BLOCKS if info == "serve"]
DOC_RUNNABLE = [(name, language, body) for name, language, info, body in DOC_BLOCKS if info == "runnable"]
# The examples table: | [`examples/...`](...) | what it shows | `serve command` |
TABLE = re.findall(r"^\| \[`(examples/[^`]+)`\]\([^)]*\) \| [^|]* \| `([^`]+)` \|$", README, re.M)
TOUR_URL = "http://127.0.0.1:8080"
# What each kind of block must print, besides exiting 0 (a block matches by a piece of its code).
EXPECTED = {
    "Client(": ["setosa", "virginica"],
    f"mlcomponent infer {TOUR_URL}": ["label", "setosa"],
    "/v2/models/iris-classifier/infer": ['"label"'],
    "mlcomponent validate examples/iris/mlcomponent.yaml": ["docstring spec OK", "Example OK"],
    "mlcomponent init": ["1 passed", "docstring spec OK", "Example OK (ran through the function in a worker)"],
    "mlcomponent render": ["kind: Deployment", "kind: Service"],
    "table=@": ["predictions", "examples/iris/data/out/"],
    "/v2/models/digits/infer": ['"label"'],
    "for manifest in": ["(MLComponent iris-classifier)", "(MLComponent iris-table)", "(MLComponent digits)"],
}


def urls_in(code: str) -> set[str]:
    return set(re.findall(r"http://127\.0\.0\.1:\d+", code))


def addresses_in(code: str) -> set[str]:
    """``127.0.0.1:PORT`` of the documented services (8080 up) a block calls, over HTTP or gRPC."""
    return {f"127.0.0.1:{port}" for port in re.findall(r"127\.0\.0\.1:(\d+)", code) if int(port) >= 8080}


def test_every_code_block_in_the_docs_is_marked() -> None:
    """A bash or python block in docs/*.md runs in the tests unless it says why not."""
    unmarked = [(name, body[:60]) for name, _, info, body in DOC_BLOCKS
                if info not in ("runnable", "serve") and not info.startswith("not-run")]
    assert unmarked == [], "mark each as runnable, serve, or not-run (with the reason after it)"
    assert len(DOC_RUNNABLE) >= 20 and DOC_SERVE, (len(DOC_RUNNABLE), DOC_SERVE)
    assert all(re.fullmatch(r"mlcomponent serve \S+( --\S+ \d+)+", command) for command in DOC_SERVE), DOC_SERVE


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
    """Documented URL -> the URL of the service the examples table's (or the docs') command for it started.

    Keys are ``http://127.0.0.1:PORT`` and ``127.0.0.1:PORT`` (gRPC ports too).
    """
    urls = {TOUR_URL: readme_first_command.url, TOUR_URL.removeprefix("http://"): readme_first_command.url[7:]}
    started = []
    try:
        commands = [(Path(example).parent, command) for example, command in TABLE[1:]]
        commands += [(Path("examples/iris"), command) for command in DOC_SERVE]
        for folder, command in commands:  # all started first, then waited for: they start side by side
            documented = dict(re.findall(r"--((?:grpc-)?port) (\d+)", command))
            assert "port" in documented, command
            ports = {option: free_port() for option in documented}
            for option, port in ports.items():
                command = command.replace(f"--{option} {documented[option]}", f"--{option} {port}")
            log = tmp_path_factory.mktemp("example") / "serve.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    ["bash", "-euo", "pipefail", "-c", ". .venv/bin/activate\n" + command],
                    cwd=fresh_checkout.root, stdout=sink, stderr=subprocess.STDOUT, env=fresh_checkout.env(),
                    start_new_session=True)
            started.append((folder, documented, ports, process, log))
        for folder, documented, ports, process, log in started:
            url = f"http://127.0.0.1:{ports['port']}"
            wait_until_live(url, process, log, deadline_s=300)
            wait_ready(Server(url, process, log, fresh_checkout.root / folder / "data"))
            urls[f"http://127.0.0.1:{documented['port']}"] = url
            for option, port in ports.items():
                urls[f"127.0.0.1:{documented[option]}"] = f"127.0.0.1:{port}"
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


@pytest.mark.parametrize(("name", "language", "body"), DOC_RUNNABLE,
                         ids=[f"{name}-block{i}" for i, (name, _, _) in enumerate(DOC_RUNNABLE)])
def test_docs_block_runs(request: pytest.FixtureRequest, fresh_checkout: Checkout, readme_first_command: Server,
                         name: str, language: str, body: str) -> None:
    if re.search(r"^curl ", body, re.M) and shutil.which("curl") is None:
        not_run("curl is not installed (scripts/test.sh installs it as root: apt-get install --no-install-recommends curl)")
    wanted = addresses_in(body)
    urls = request.getfixturevalue("examples_served") if wanted - {"127.0.0.1:8080"} else {
        "127.0.0.1:8080": readme_first_command.url.removeprefix("http://")}
    code = body
    for address in wanted:
        assert address in urls, f"docs/{name}: the block calls {address}, which nothing in the docs serves"
    # one pass, so that a replaced port is never replaced again
    code = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: urls.get(m.group(0), m.group(0)), code)
    if language == "bash":
        result = fresh_checkout.bash(code)
    else:
        result = subprocess.run([str(fresh_checkout.venv / "bin" / "python"), "-c", code], cwd=fresh_checkout.root,
                                capture_output=True, text=True, env=fresh_checkout.env(), timeout=120)
    report = f"docs/{name} block failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report


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
