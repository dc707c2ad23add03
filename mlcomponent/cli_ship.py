"""The shipping commands: build, push, upload, deploy, status (registered in ``cli.py``).

Each failure is one line on stderr and exit code 1: no engine, registry refused, box
unreachable, wrong credentials, cluster unreachable, CRD not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import click

from mlcomponent.errors import ManifestError
from mlcomponent.manifest import Manifest, load_manifest


def _fail(lines: list[str] | str) -> NoReturn:
    for line in [lines] if isinstance(lines, str) else lines:
        click.echo(line, err=True)
    sys.exit(1)


def _manifest(path: str) -> Manifest:
    try:
        return load_manifest(path)
    except ManifestError as error:
        _fail(error.problems)


def _module_root(manifest_path: str, module_root: str | None) -> Path:
    return Path(module_root).resolve() if module_root else Path(manifest_path).resolve().parent


def _run(command: list[str], what: str) -> None:
    """The engine's output streams to the terminal; a failure ends with its last line."""
    click.echo(f"$ {' '.join(command)}", err=True)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as error:
        _fail(f"{what}: cannot run {command[0]}: {error.strerror}")
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        click.echo(line, nl=False, err=True)
        tail = [*tail[-20:], line]
    if process.wait() != 0:
        from mlcomponent.ship.build import last_line

        _fail(f"{what} failed ({command[0]} exited with {process.returncode}): {last_line(''.join(tail))}")


@click.command()
@click.argument("manifest")
@click.option("--from", "base", metavar="IMAGE", default=None,
              help="Base image with python3 3.11+ and pip [default: docker.io/library/python:3.11-slim].")
@click.option("--tag", help="Image name to tag [default: spec.image.existingImageName].")
@click.option("--module-root", type=click.Path(file_okay=False, exists=True),
              help="The module's folder (pythonPath is relative to it). Default: the manifest's folder.")
@click.option("--engine", type=click.Choice(["podman", "buildah", "docker"]),
              help="Container engine [default: the first of podman, buildah, docker on PATH].")
@click.option("--with-library", is_flag=True, help="Bake this mlcomponent version into the image (faster starts).")
@click.option("--index-url", metavar="URL", help="Package index pip installs the dependencies from (INDEX_URL).")
@click.option("--network", help="The build's network (the engine's --network), e.g. host.")
@click.option("--print", "print_only", is_flag=True, help="Print the generated Containerfile and build nothing.")
def build(manifest: str, base: str | None, tag: str | None, module_root: str | None, engine: str | None,
          with_library: bool, index_url: str | None, network: str | None, print_only: bool) -> None:
    """Build MANIFEST's image and tag it spec.image.existingImageName."""
    from urllib.parse import urlsplit

    from mlcomponent.ship.build import DEFAULT_BASE, BuildError, build_command, containerfile, find_engine, plan

    parsed = _manifest(manifest)
    root = _module_root(manifest, module_root)
    try:
        text = containerfile(parsed, plan(parsed, root), base or DEFAULT_BASE, with_library)
        if print_only:
            click.echo(text, nl=False)
            return
        chosen = find_engine(engine)
    except BuildError as error:
        _fail(f"build: {error}")
    image = tag or parsed.spec.image.existing_image_name
    build_args = {}
    if index_url:
        build_args["INDEX_URL"] = index_url
        if urlsplit(index_url).scheme == "http":
            build_args["TRUSTED_HOST"] = urlsplit(index_url).netloc.split(":")[0]
    with tempfile.TemporaryDirectory(prefix="mlcomponent-build-") as folder:
        path = Path(folder) / "Containerfile"
        path.write_text(text, encoding="utf-8")
        click.echo(f"building {image} with {chosen} from {root}", err=True)
        _run(build_command(chosen, path, image, root, build_args, network), "build")
    click.echo(f"built {image} (with {chosen}); next: mlcomponent push {manifest}")


@click.command()
@click.argument("manifest")
@click.option("--tag", help="Image to push [default: spec.image.existingImageName].")
@click.option("--engine", type=click.Choice(["podman", "buildah", "docker"]))
@click.option("--tls-verify/--no-tls-verify", default=True, show_default=True,
              help="--no-tls-verify: a plain-HTTP or self-signed registry (podman, buildah; docker's daemon "
                   "decides with insecure-registries).")
def push(manifest: str, tag: str | None, engine: str | None, tls_verify: bool) -> None:
    """Push MANIFEST's image (spec.image.existingImageName) to its registry."""
    from mlcomponent.ship.build import BuildError, find_engine, push_command

    image = tag or _manifest(manifest).spec.image.existing_image_name
    try:
        chosen = find_engine(engine)
    except BuildError as error:
        _fail(f"push: {error}")
    if chosen == "docker" and not tls_verify:
        click.echo("note: docker pushes to a plain-HTTP registry only if its daemon lists it in insecure-registries",
                   err=True)
    _run(push_command(chosen, image, tls_verify), f"push of {image}")
    click.echo(f"pushed {image} (with {chosen}); next: mlcomponent upload {manifest} MODEL")


@click.command()
@click.argument("manifest")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--boxes", type=click.Path(dir_okay=False, exists=True),
              help="The --boxes file serve reads: which box is S3 (endpoint, credentials env vars) or a folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="The operator's configuration: S3 at its s3Endpoint, credentials from AWS_ACCESS_KEY_ID/"
                   "AWS_SECRET_ACCESS_KEY.")
@click.option("--data-root", type=click.Path(file_okay=False),
              help="For a folder box: the data root serve uses. Default: data/ beside the manifest.")
def upload(manifest: str, files: tuple[Path, ...], boxes: str | None, config_path: str | None,
           data_root: str | None) -> None:
    """Upload the model FILES where MANIFEST's modelBox, subPath and modelPath say (one file: modelPath itself)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

    from mlcomponent.boxes.config import BoxesConfig
    from mlcomponent.kubernetes.render import OperatorConfig
    from mlcomponent.ship.upload import Target, UploadError, items, target_from_boxes

    parsed = _manifest(manifest)
    box_name = parsed.box(parsed.inference.model.model_box).s3_box_name
    try:
        planned = items(parsed, list(files))
        if config_path and not boxes:
            config = OperatorConfig.load(config_path)
            target = Target(box_name, bucket=box_name, endpoint=config.s3_endpoint, region=config.s3_region,
                            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"))
        else:
            settings = BoxesConfig.load(boxes).settings_for(box_name)
            root = Path(data_root) if data_root else Path(manifest).resolve().parent / "data"
            target = target_from_boxes(box_name, settings, root, os.environ)
    except (UploadError, ValueError) as error:
        _fail(f"upload: {' '.join(str(error).split())}")
    from mlcomponent.ship.upload import upload as put

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    for item in planned:
        size = item.source.stat().st_size
        try:
            with Progress(*columns, transient=True) as bar:
                task = bar.add_task(f"{item.source.name}", total=size)

                def advance(sent: int, task: TaskID = task, bar: Progress = bar) -> None:
                    bar.update(task, advance=sent)

                checked = put(target, item, advance)
        except UploadError as error:
            _fail(f"upload: {' '.join(str(error).split())}")
        click.echo(f"uploaded {item.source} -> {box_name}/{item.key} ({size} bytes, {checked} checked)")


@click.command()
@click.argument("manifest")
@click.option("-n", "--namespace", help="Namespace [default: metadata.namespace, else the context's].")
@click.option("--context", help="kubeconfig context [default: the current one].")
@click.option("--timeout", default=600.0, show_default=True, type=float, help="Seconds to wait for Ready.")
@click.option("--no-wait", is_flag=True, help="Apply and return.")
def deploy(manifest: str, namespace: str | None, context: str | None, timeout: float, no_wait: bool) -> None:
    """Apply MANIFEST to the current Kubernetes context and wait until it is Ready."""
    import yaml

    from mlcomponent.manifest import read_manifest_text
    from mlcomponent.ship.deploy import Cluster, DeployError, wait_ready

    parsed = _manifest(manifest)
    data = yaml.safe_load(read_manifest_text(manifest))
    try:
        cluster = Cluster.connect(context)
        where = namespace or parsed.metadata.namespace or cluster.default_namespace()
        applied = cluster.apply(data, where)
        name = parsed.metadata.name
        generation = int((applied.get("metadata") or {}).get("generation", 1))
        click.echo(f"applied MLComponent {where}/{name} (generation {generation})", err=True)
        if no_wait:
            return
        message = wait_ready(cluster, name, where, generation, timeout, lambda line: click.echo(line, err=True))
    except DeployError as error:
        _fail(f"deploy: {error}")
    url = ((cluster.component(name, where) or {}).get("status") or {}).get("url", "")
    click.echo(f"{where}/{name} is Ready ({message}){f': {url}' if url else ''}")


@click.command()
@click.argument("name")
@click.option("-n", "--namespace", help="Namespace [default: the context's].")
@click.option("--context", help="kubeconfig context [default: the current one].")
def status(name: str, namespace: str | None, context: str | None) -> None:
    """Print MLComponent NAME's Ready condition, model content, replicas and last events."""
    from mlcomponent.ship.deploy import Cluster, DeployError, view

    try:
        cluster = Cluster.connect(context)
        where = namespace or cluster.default_namespace()
        component = cluster.component(name, where)
        if component is None:
            _fail(f"status: no MLComponent {name!r} in namespace {where!r}; check the name, or pass -n NAMESPACE")
        pods = cluster.pods(name, where)
        lines = view(component, pods, cluster.events(pods, name, where))
    except DeployError as error:
        _fail(f"status: {error}")
    click.echo("\n".join(lines))


COMMANDS = (build, push, upload, deploy, status)
