"""Container images for the node tests, built with podman (../shared/tools/containers).

Each image is tagged with a digest of what goes into it, and built only when no image has
that tag: a re-run with the same code takes no build at all, and podman's layer cache
covers the rest. Older tags of the same image are removed, so they do not pile up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.support import ROOT

CONTAINERS = ROOT.parent / "shared" / "tools" / "containers"
BASE_IMAGE = "localhost/mlcomponent-base:bookworm"


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS / "containers.conf")}


def ensure_podman() -> None:
    """podman and the base image (installs them the first time: ~1 min)."""
    result = subprocess.run([str(CONTAINERS / "ensure.sh")], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{CONTAINERS}/ensure.sh failed:\n{result.stderr[-3000:]}")


def podman(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)


def digest(*parts: bytes | str | Path | Iterable[Path]) -> str:
    """A short digest of bytes, strings, files and folders (their files' names and contents)."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path) and part.is_dir():
            part = sorted(p for p in part.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        if isinstance(part, Path):
            part = [part]
        if isinstance(part, str):
            part = part.encode()
        if isinstance(part, bytes):
            hasher.update(part)
            continue
        for path in part:
            hasher.update(path.name.encode() + b"\0" + path.read_bytes())
    return hasher.hexdigest()[:12]


def build(repository: str, tag: str, context: Path, containerfile: Path, build_args: dict[str, str],
          network: str = "none") -> str:
    """``repository:tag``, built unless it exists; other tags of ``repository`` are removed after."""
    image = f"{repository}:{tag}"
    if podman("image", "exists", image).returncode != 0:
        args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
        result = podman("build", "--network", network, "--layers", "-f", str(containerfile), "-t", image, *args,
                        str(context))
        if result.returncode != 0:
            raise RuntimeError(f"podman build of {image} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repository}")
    stale = [name for name in listed.stdout.split() if name != image and name.startswith(repository + ":")]
    if stale:
        podman("rmi", *stale)
    return image


def no_python_image(work: Path) -> str:
    """An image with no Python (nor anything else to run): one text file."""
    context = work / "no-python"
    context.mkdir(parents=True, exist_ok=True)
    (context / "README.txt").write_text("This image has no Python: mlcomponent cannot be installed into it.\n")
    (context / "Containerfile").write_text("FROM scratch\nCOPY README.txt /README.txt\n")
    return build("localhost/mlcomponent-e2e-no-python", digest(context), context, context / "Containerfile", {})
