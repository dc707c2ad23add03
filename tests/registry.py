"""A package registry as a platform runs one: the library's wheel built from this checkout, its
dependencies' wheels, and a PEP 503 "simple" index of them served over HTTP.

The dependency wheels are fetched once with pip (from this machine's configured indexes) and
cached by what was asked for; the index serves each file with its ``#sha256=`` and its
``Requires-Python``, so pip checks both.
"""

from __future__ import annotations

import email.parser
import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import HTTP, ROOT, free_port, stop_group

CACHE = Path(os.environ.get("MLCOMPONENT_E2E_CACHE", "/var/cache/mlcomponent-e2e"))
SOURCES = ("pyproject.toml", "README.md", "mlcomponent")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(folder: Path) -> Path:
    """The library's wheel, built from a clean copy of the checkout (no stale build/ folder).

    ``SOURCE_DATE_EPOCH`` makes it byte-for-byte the same for the same sources, so images
    that contain it are rebuilt only when the code changed.
    """
    with tempfile.TemporaryDirectory(prefix="mlcomponent-src-") as temporary:
        source = Path(temporary)
        for name in SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, source / name)
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(folder),
                                 str(source)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"})
    if result.returncode != 0:
        raise RuntimeError(f"building the mlcomponent wheel failed:\n{result.stderr}")
    return next(folder.glob("mlcomponent-*.whl"))


def dependency_requirements(extras: tuple[str, ...]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return requirements


def gather_wheels(requirements: list[str]) -> Path:
    """Wheels of ``requirements`` and everything they need, for this Python; cached by the list."""
    key = hashlib.sha256("\n".join([sys.version.split()[0], *sorted(requirements)]).encode()).hexdigest()[:16]
    folder = CACHE / "wheels" / key
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=folder.parent))  # renamed whole into place, or not at all
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                                 "--dest", str(partial), *requirements], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"pip download of the dependency wheels failed:\n{result.stderr[-3000:]}")
        partial.chmod(0o755)
        partial.rename(folder)
    except OSError:
        if not folder.is_dir():  # not another run that got there first
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _requires_python(wheel: Path) -> str | None:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8", "replace"), headersonly=True)
    return metadata.get("Requires-Python")


def publish(folder: Path, wheels: list[Path]) -> Path:
    """A PEP 503 tree in ``folder``: files/ with the wheels, simple/<project>/ with links to them."""
    files, simple = folder / "files", folder / "simple"
    shutil.rmtree(folder, ignore_errors=True)
    files.mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for wheel in sorted(wheels):
        shutil.copy2(wheel, files / wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        requires = _requires_python(wheel)
        attribute = f' data-requires-python="{html.escape(requires)}"' if requires else ""
        link = f'<a href="../../files/{wheel.name}#sha256={digest}"{attribute}>{wheel.name}</a><br>'
        projects.setdefault(_normalize(wheel.name.split("-")[0]), []).append(link)
    for project, links in projects.items():
        (simple / project).mkdir(parents=True)
        (simple / project / "index.html").write_text(
            f"<!DOCTYPE html><html><body>\n{chr(10).join(links)}\n</body></html>\n")
    listing = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{listing}</body></html>\n")
    return folder


@contextmanager
def serve(folder: Path, address: str, log: Path) -> Iterator[str]:
    """``python -m http.server`` over the tree on ``address``; yields the index URL (…/simple)."""
    port = free_port()
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", address,
                                    "--directory", str(folder)], stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://{address}:{port}/simple"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if HTTP.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the package index on {address} did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        stop_group(process)
