"""The command line: the only place argv is parsed; ``serve`` checks what can refuse to start,
then runs uvicorn over ``process.py``, which wires one serving process's layers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Any, NoReturn, get_args, get_type_hints

import click

from mlcomponent import __version__
from mlcomponent.errors import EntryPointError, ManifestError
from mlcomponent.options import OPTIONS_ENV, Cli, ServeOptions, cli_of, declared, flag
from mlcomponent.settings import Settings

# Modules that come with an extra, not with mlcomponent itself: which extra to install.
EXTRAS = {"kopf": "kubernetes", "kubernetes": "kubernetes"}


def _fail(lines: list[str] | str, code: int = 1) -> NoReturn:
    for line in [lines] if isinstance(lines, str) else lines:
        click.echo(line, err=True)
    sys.exit(code)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Commands(click.Group):
    """The command group: whole descriptions in ``--help``, and every mistake answered in one line."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))  # wrapped, never cut with "..."
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as error:
            extra = EXTRAS.get((error.name or "").split(".")[0])
            if extra is None:
                raise
            _fail(f"mlcomponent {ctx.invoked_subcommand}: needs {error.name!r}, which comes with the {extra!r} "
                  f"extra: pip install 'mlcomponent[{extra}]'")

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except _NO_ARGS_IS_HELP as error:  # bare `mlcomponent` (click 8.2+): the help, as click shows it
            click.echo(error.format_message())
            sys.exit(error.exit_code)
        except click.UsageError as error:
            where = error.ctx.command_path if error.ctx else "mlcomponent"
            _fail(f"{where}: {error.format_message()} (see '{where} --help')", error.exit_code)
        except click.ClickException as error:
            _fail(f"mlcomponent: {error.format_message()}", error.exit_code)
        except click.Abort:
            _fail("aborted")
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlcomponent")
def main() -> None:
    """Serve one Python inference function as an Open Inference Protocol (KServe V2) service."""


@main.command()
@click.argument("manifest")
@click.option("--no-run", is_flag=True, help="Do not run the docstring's Example through the function.")
def validate(manifest: str, no_run: bool) -> None:
    """Check MANIFEST (and its entry point and docstring spec, when the module is here), then run the
    docstring's Example through the function when the model is here."""
    import asyncio

    from mlcomponent.manifest import load_manifest, locate
    from mlcomponent.runtime.entrypoint import unchecked_reason
    from mlcomponent.runtime.service import load_function_and_spec
    from mlcomponent.runtime.tryout import run_example

    try:
        parsed = load_manifest(manifest)
    except ManifestError as error:
        count = len(error.problems)
        _fail(error.problems + ([f"{manifest}: {count} problem(s)"] if count > 1 else []))
    click.echo(f"{manifest}: manifest OK ({parsed.kind} {parsed.metadata.name})")
    settings = Settings.build(ServeOptions(manifest=manifest), os.environ)
    entry = parsed.inference.entry_point
    reason = unchecked_reason(settings.python_path, settings.module_root, entry.python_function)
    if reason is not None:
        click.echo(f"{manifest}: entry point not checked: {reason}")
        return
    try:
        _, spec = load_function_and_spec(settings)
    except EntryPointError as error:
        field = "pythonPath" if str(error).startswith("pythonPath") else "pythonFunction"
        _fail(f"{locate(manifest, ('spec', 'mlService', 'inference', 'entryPoint', field))}: {error}")
    if spec.declared:
        click.echo(f"{entry.python_function}: docstring spec OK ({len(spec.inputs)} inputs, "
                   f"{len(spec.outputs)} outputs, {len(spec.parameters)} parameters"
                   f"{', with an example' if spec.example else ''})")
    else:
        click.echo(f"{entry.python_function}: no docstring specification; requests will not be validated")
    if spec.example is None or no_run:
        return
    try:
        ran, line = asyncio.run(run_example(settings))
    except (EntryPointError, ValueError, OSError) as error:
        _fail(f"{entry.python_function}: Example not run: {_one_line(error)}")
    if not ran:
        click.echo(f"{entry.python_function}: Example not run: {line}")
    elif line:
        _fail(f"{entry.python_function}: {line}")
    else:
        click.echo(f"{entry.python_function}: Example OK (ran through the function in a worker)")


def _click_param(declaration: Field[Any], owner: type = ServeOptions) -> Callable[[Callable[..., Any]],
                                                                               Callable[..., Any]]:
    """The click option (or argument) for one declared serve option: flags, type, default and help."""
    cli = cli_of(declaration)
    if cli.argument:
        return click.argument(declaration.name)
    kind = _field_type(declaration, owner)
    names = [flag(declaration.name), *cli.flags]
    kwargs: dict[str, Any] = {"help": declaration.metadata["help"], "metavar": cli.metavar}
    if kind is bool:
        off = f"--no-{declaration.name.replace('_', '-')}" if cli.off is None else cli.off
        names = [f"{names[0]}/{off}" if off else names[0], *cli.flags]
        kwargs.update(is_flag=True, default=declaration.default, show_default=bool(off))
    else:
        kwargs.update(type=_click_type(kind, cli), default=declaration.default,
                      show_default=cli.shown is not None or declaration.default is not None)
        if cli.shown is not None:
            kwargs["default"] = cli.shown
    return click.option(*names, declaration.name, **kwargs)


def _field_type(declaration: Field[Any], owner: type) -> type:
    """``int | None`` -> int: the type a command-line value has."""
    hint = get_type_hints(owner)[declaration.name]
    kinds = [kind for kind in get_args(hint) if kind is not type(None)] or [hint]
    return cli_of(declaration).takes or kinds[0]


def _click_type(kind: type, cli: Cli) -> Any:
    if cli.choices:
        return click.Choice(list(cli.choices))
    if cli.path is not None:
        return click.Path(dir_okay=cli.path == "dir", file_okay=cli.path == "file", exists=cli.path == "file")
    if kind is int and (cli.low is not None or cli.high is not None):
        return click.IntRange(cli.low, cli.high)
    return kind


def _serve_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every declared serve option on the command, in declaration order."""
    for declaration in reversed(declared()):
        command = _click_param(declaration)(command)
    return command


def _options_from_cli(values: dict[str, Any]) -> ServeOptions:
    """The command line's values as ``ServeOptions`` (each declared ``parse`` applied: paths, durations)."""
    parsed = {}
    for declaration in declared():
        value, parse = values[declaration.name], cli_of(declaration).parse
        try:
            parsed[declaration.name] = parse(value) if parse is not None and value is not None else value
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=flag(declaration.name)) from None
    return ServeOptions(**parsed)


@main.command()
@_serve_options
def serve(**values: Any) -> None:
    """Serve MANIFEST's inference function over HTTP, and gRPC with --grpc-port."""
    from mlcomponent.logs import configure_logging

    options = _options_from_cli(values)
    configure_logging(options.log_format, options.log_level)
    settings = _prepare(options)
    _run(options, settings)


def _prepare(options: ServeOptions) -> Settings:
    """Everything that can refuse to start, before anything starts or is announced."""
    import asyncio

    from mlcomponent.runtime.retention import sweep_request_folders
    from mlcomponent.runtime.service import check_entry_point

    try:
        settings = Settings.build(options, os.environ)
        _check_can_listen(options.host, options.port)  # before anything starts or is announced
        _check_writable(settings.data_root)
        asyncio.run(check_entry_point(settings))
        _sync_mounts(settings)
        sweep_request_folders(settings.files_root())  # left by a process killed mid-request; nothing serves yet
    except ManifestError as error:
        _fail(error.problems)
    except EntryPointError as error:
        _fail(f"cannot start: {error}")
    except ValueError as error:
        _fail(f"cannot start: {_one_line(error)}")
    return settings


# The standard library's event loop, not uvloop (uvicorn's "auto" choice): the same throughput for our
# requests, and fair under overload. With 1,000 connections on one core uvloop served some connections
# for seconds at a time while others waited: p99 4.6 s against 0.24 s (docs/benchmarks.md).
EVENT_LOOP = "asyncio"


def _run(options: ServeOptions, settings: Settings) -> None:
    """uvicorn over ``process.py``'s app, in ``settings.workers`` processes (one with --reload)."""
    import uvicorn

    from mlcomponent.http.connections import PROTOCOL
    from mlcomponent.http.server import run as run_server

    os.environ[OPTIONS_ENV] = options.to_env()
    if settings.workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_fresh_metrics_dir(settings.data_root)))
    host, port, grpc_port, reload = options.host, options.port, options.grpc_port, options.reload
    click.echo(f"serving {settings.model_name} on http://{host}:{port}"
               f"{f' and grpc://{host}:{grpc_port}' if grpc_port is not None else ''} "
               f"(workers: {settings.workers}, isolated: {options.isolate}, data: {settings.data_root})", err=True)
    run_server(uvicorn.Config(
        "mlcomponent.process:app", factory=True, host=host, port=port, http=PROTOCOL, loop=EVENT_LOOP,
        workers=1 if reload else settings.workers, access_log=False, log_config=None,
        timeout_graceful_shutdown=int(options.grace_period), reload=reload,
        reload_dirs=[str(settings.module_root)] if reload else None,
        reload_includes=["*.py", "*.yaml", "*.yml"] if reload else None,
    ))


def _check_can_listen(host: str, port: int) -> None:
    """Bind the address once before announcing anything, so a taken port is one clear line."""
    import errno
    import socket

    def bind(candidate: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind((host, candidate))

    try:
        bind(port)
    except OSError as error:
        if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"--host {host!r} is not an address of this machine ({error.strerror}); "
                             "use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)") from None
        if error.errno == errno.EADDRINUSE:
            free = next((p for p in range(port + 1, min(port + 50, 65536)) if _bindable(bind, p)), None)
            hint = f", e.g. --port {free}" if free else ""
            raise ValueError(f"port {port} on {host} is already in use (by another `mlcomponent serve`?); "
                             f"stop that, or pick another port with --port{hint}") from None
        if error.errno == errno.EACCES:
            raise ValueError(f"port {port} needs root rights on this machine; pick a port from 1024 up with "
                             "--port, e.g. --port 8080") from None
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror}; check --host and --port") from None


def _bindable(bind: Callable[[int], None], port: int) -> bool:
    try:
        bind(port)
        return True
    except OSError:
        return False


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the data folder {folder}: {error.strerror}; "
                         "pick a folder you can write with --data-root") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"the data folder {folder} is not writable; pick a folder you can write with --data-root")


def _fresh_metrics_dir(data_root: Path) -> Path:
    """prometheus-client's multiprocess mode: one folder of value files shared by the workers."""
    import shutil

    folder = data_root / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _sync_mounts(settings: Settings) -> None:
    """Sync S3 mounts once in the parent process, before workers start; a progress bar once a fetch begins."""
    from mlcomponent.runtime.mounts import resolve_mounts

    bar: Any = None  # rich's Progress, made when the first fetch begins (local boxes fetch nothing)

    def progress(name: str, size: int) -> None:
        nonlocal bar
        if bar is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), transient=True)
            bar.start()
            bar.add_task("syncing model box", total=None)
        bar.update(bar.task_ids[0], advance=size, description=f"{'synced' if size else 'syncing'} {name}")

    try:
        resolve_mounts(settings, sync=True, progress=progress)
    finally:
        if bar is not None:
            bar.stop()


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise click.BadParameter(f"{text!r} must look like name=value", param_hint=option)
    return name.strip(), value


def _typed_parameter(raw: str, declared: dict[str, object] | None) -> object:
    import yaml

    kind = (declared or {}).get("type")
    try:
        if kind == "str":
            return raw
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not a valid {kind}", param_hint="-p") from None
    value = yaml.safe_load(raw) if raw else ""
    return value if isinstance(value, (str, int, float, bool)) else raw


def _typed_input(raw: str, datatype: str | None) -> object:
    import json

    text = raw.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            raise click.BadParameter(f"{raw!r} is not valid JSON", param_hint="-i") from None
    items = [item.strip() for item in text.split(",")] if text else []
    try:
        if datatype == "INT32":
            return [int(item) for item in items]
        if datatype in ("FP32", "FP64") or datatype is None:
            return [float(item) for item in items]
    except ValueError:
        if datatype is not None:
            raise click.BadParameter(f"{raw!r}: {datatype} values must be numbers", param_hint="-i") from None
    return items


@main.command()
@click.argument("url")
@click.option("-i", "--input", "inputs", multiple=True, metavar="NAME=V[,V...]",
              help="An input's values (comma-separated, or JSON); typed from the service's metadata.")
@click.option("-p", "--parameter", "parameters", multiple=True, metavar="NAME=VALUE", help="A request parameter.")
@click.option("-f", "--file", "files", multiple=True, metavar="NAME=@PATH", help="A file for a FILE input.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), help="Save FILE outputs here.")
@click.option("--output", "outputs", multiple=True, metavar="NAME", help="Ask for this output (repeatable).")
@click.option("--file-output", "file_outputs", multiple=True, metavar="NAME",
              help="Ask for this output as a FILE (for functions without a docstring spec).")
@click.option("--model", help="Model name (default: the one the service serves).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw V2 response.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--token-env", help="Env var holding a bearer token.")
def infer(url: str, inputs: tuple[str, ...], parameters: tuple[str, ...], files: tuple[str, ...],
          output_dir: str | None, outputs: tuple[str, ...], file_outputs: tuple[str, ...], model: str | None,
          as_json: bool, timeout: float, token_env: str | None) -> None:
    """Call a running service at URL (http://HOST:PORT, or grpc://HOST:PORT/MODEL) and print its outputs."""
    import json

    from mlcomponent.cli_output import print_result, transfer_progress
    from mlcomponent.client import Client, ClientError

    token = os.environ.get(token_env) if token_env else None
    paths = {}  # local files first: a wrong path is said before anything is sent
    for text in files:
        name, raw = _split_assignment(text, "-f")
        path = Path(raw.removeprefix("@")).expanduser()
        if not path.is_file():
            raise click.BadParameter(f"{path} is not a file", param_hint="-f")
        paths[name] = path
    try:
        with Client(url, model, timeout=timeout, token=token) as client:
            metadata = client.metadata()
            declared_inputs = {t["name"]: t for t in metadata.get("inputs", [])}
            declared_params = {p["name"]: p for p in metadata.get("parameters", {}).get("parameters", [])}
            values = {}
            for text in inputs:
                name, raw = _split_assignment(text, "-i")
                values[name] = _typed_input(raw, declared_inputs.get(name, {}).get("datatype"))
            params = {}
            for text in parameters:
                name, raw = _split_assignment(text, "-p")
                params[name] = _typed_parameter(raw, declared_params.get(name))
            size = sum(p.stat().st_size for p in paths.values())
            with transfer_progress(size, "uploading") as progress:
                wanted: list[str | dict[str, object]] = [*outputs]
                wanted += [{"name": name, "parameters": {"datatype": "FILE"}} for name in file_outputs]
                result = client.infer(values, parameters=params, files=paths, outputs=wanted or None,
                                      progress=progress)
            saved = {}
            if output_dir:
                for name, output in result.files.items():
                    with transfer_progress(0, f"downloading {name}") as progress:
                        saved[name] = client.download(output, Path(output_dir) / Path(output.key).name, progress)
    except ClientError as error:
        hint = "; is the service running there? (mlcomponent serve MANIFEST)" if error.message.startswith(
            "cannot connect") else ""
        _fail(f"error: {error.message}{hint}")
    if as_json:
        click.echo(json.dumps(result.raw, indent=2))
        return
    print_result(result, saved)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
def init(folder: str, force: bool) -> None:
    """Scaffold a working module in FOLDER: function with docstring spec, manifest, model, test."""
    from mlcomponent.scaffold import scaffold

    try:
        written = scaffold(Path(folder), force)
    except FileExistsError as error:
        _fail(f"init: {error}")
    except OSError as error:
        _fail(f"init: cannot write {error.filename or folder}: {error.strerror}; pick a folder you can write")
    for path in written:
        click.echo(f"wrote {path}")
    manifest = Path(folder) / "mlcomponent.yaml"
    click.echo(f"\nnext: mlcomponent validate {manifest} && mlcomponent serve {manifest}")


@main.command("sync-box")
@click.argument("box")
@click.argument("destination", type=click.Path(file_okay=False))
@click.option("--sub-path", default="", help="Folder inside the box to sync.")
@click.option("--endpoint", help="S3 endpoint URL (default: AWS, or AWS_ENDPOINT_URL).")
@click.option("--region")
@click.option("--bucket", help="Bucket (default: the box name).")
@click.option("--access-key-env", help="Env var holding the access key id.")
@click.option("--secret-key-env", help="Env var holding the secret key.")
def sync_box(box: str, destination: str, sub_path: str, endpoint: str | None, region: str | None,
             bucket: str | None, access_key_env: str | None, secret_key_env: str | None) -> None:
    """Sync SUB_PATH of an S3 BOX into DESTINATION (the init container of a mounted box)."""
    from mlcomponent.boxes.config import BoxSettings, S3Settings, open_box
    from mlcomponent.boxes.sync import sync_prefix

    settings = BoxSettings(s3=S3Settings(endpoint=endpoint, bucket=bucket, region=region,
                                         access_key_env=access_key_env, secret_key_env=secret_key_env))
    try:
        store = open_box(box, settings, Path(destination), os.environ)
        counts = sync_prefix(store, sub_path.strip("/"), Path(destination),
                             lambda name, size: click.echo(f"fetched {name} ({size} bytes)", err=True))
    except (ValueError, OSError) as error:
        _fail(f"sync-box {box}: {error}")
    click.echo(f"synced {box}/{sub_path} -> {destination}: {counts}")


@main.command()
@click.argument("manifest")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="Operator configuration (registries, S3 endpoint, CSI mounts).")
def render(manifest: str, config_path: str | None) -> None:
    """Print the Kubernetes objects MANIFEST becomes, as multi-document YAML."""
    from mlcomponent.kubernetes.render import OperatorConfig, to_yaml
    from mlcomponent.kubernetes.render import render as render_objects
    from mlcomponent.manifest import load_manifest

    try:
        objects = render_objects(load_manifest(manifest), OperatorConfig.load(config_path))
    except ManifestError as error:
        _fail(error.problems)
    except ValueError as error:
        _fail(f"{manifest}: {error}")
    click.echo(to_yaml(objects), nl=False)


@main.command()
@click.option("--cel", is_flag=True, help="Add the cross-field rules as CEL validations (Kubernetes 1.25+).")
def crd(cel: bool) -> None:
    """Print the MLComponent CustomResourceDefinition as YAML."""
    import yaml

    from mlcomponent.kubernetes.crd import crd as make_crd

    click.echo(yaml.safe_dump(make_crd(cel), sort_keys=False), nl=False)


@main.command()
@click.option("--render", "render_only", is_flag=True, hidden=True,
              help="Accepted for compatibility: printing the objects is what install does.")
@click.option("--image", default=None, metavar="IMAGE",
              help="The operator's image, built from the repository's Containerfile "
                   "[default: localhost/mlcomponent-operator:VERSION].")
@click.option("--index-url", default=None, metavar="URL",
              help="Package index that publishes mlcomponent, for the registry name `python-package-registry`.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="Operator configuration (registries, S3 endpoint, box secrets) for its ConfigMap.")
def install(render_only: bool, image: str | None, index_url: str | None, config_path: str | None) -> None:
    """Print what installs the operator (namespace, CRD, RBAC, config, Deployment); pipe it to kubectl apply -f -."""
    import yaml

    from mlcomponent.kubernetes.install import IMAGE, install_yaml
    from mlcomponent.kubernetes.render import OperatorConfig

    try:
        config = OperatorConfig.load(config_path) if config_path else None
    except (ValueError, yaml.YAMLError) as error:  # pydantic's ValidationError is a ValueError
        _fail(f"install: {config_path}: {error}")
        return
    click.echo(install_yaml(image or IMAGE, config, index_url), nl=False)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="Operator configuration YAML (see docs/kubernetes.md).")
@click.option("--namespace", "namespaces", multiple=True, help="Watch only these namespaces (default: all).")
@click.option("--verbose", is_flag=True)
def operator(config_path: str | None, namespaces: tuple[str, ...], verbose: bool) -> None:
    """Run the operator: reconcile MLComponents into ConfigMap, Deployment and Service."""
    from mlcomponent.kubernetes.operator import run

    _check_cluster_credentials()
    run(config_path, list(namespaces), verbose)


def _check_cluster_credentials() -> None:
    """The operator needs a cluster: say so in one line, before kopf's login traceback would."""
    from kubernetes import config

    try:
        config.load_incluster_config()
        return
    except config.ConfigException:
        pass
    try:
        config.load_kube_config()
    except (config.ConfigException, OSError, ValueError, TypeError) as error:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        _fail(f"mlcomponent operator: no cluster to connect to: cannot load the kubeconfig {where} "
              f"({_one_line(error) or type(error).__name__}); set KUBECONFIG to a cluster's kubeconfig, "
              "or run the operator in the cluster (kubectl apply -f deploy/)")


def _add_shipping_commands() -> None:
    from mlcomponent.cli_ship import COMMANDS  # build, push, upload, deploy, status

    for command in COMMANDS:
        main.add_command(command)


_add_shipping_commands()

if __name__ == "__main__":
    main()
