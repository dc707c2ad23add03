"""Each serve option is declared once (``mlcomponent/options.py``) and every reader takes it from there."""

from __future__ import annotations

import dataclasses

import click
from click.testing import CliRunner

from mlcomponent.cli import _click_param, _options_from_cli, main
from mlcomponent.http.connections import Guard
from mlcomponent.kubernetes.render import serve_command
from mlcomponent.options import DEFAULTS, MB, ServeOptions, declared, flag
from mlcomponent.runtime.dataplane import Limits


def _serve() -> click.Command:
    command = main.get_command(click.Context(main), "serve")  # type: ignore[attr-defined]
    assert command is not None
    return command  # type: ignore[no-any-return]


def test_every_declared_option_is_on_the_command_line_with_its_default_and_help() -> None:
    params = {param.name: param for param in _serve().params}
    assert set(params) == {declaration.name for declaration in declared()}
    for declaration in declared():
        param = params[declaration.name]
        if isinstance(param, click.Option):
            assert flag(declaration.name) in param.opts
            assert param.help == declaration.metadata["help"]


def test_the_command_line_defaults_are_the_declared_ones() -> None:
    """Parsing nothing but the manifest gives ``ServeOptions``' defaults (paths resolved, durations parsed)."""
    context = _serve().make_context("serve", ["m.yaml"])
    options = _options_from_cli(dict(context.params))
    assert dataclasses.replace(options, manifest="") == DEFAULTS


def test_units_are_in_the_names_and_converted_once() -> None:
    context = _serve().make_context("serve", ["m.yaml", "--max-json-body", "2", "--max-upload-mb", "3",
                                              "--keep-files", "30m", "--timeout", "0", "--no-limits"])
    options = _options_from_cli(dict(context.params))
    assert (options.max_json_body_mb, options.max_json_body_bytes, options.max_upload_bytes) == (2, 2 * MB, 3 * MB)
    assert (options.keep_files, options.timeout, options.limits) == (1800.0, None, False)


def test_a_unit_other_than_seconds_or_a_count_is_in_the_name() -> None:
    for declaration in declared():
        unit = declaration.metadata["unit"]
        suffix = {"MB": "_mb", "ms": "_ms", "KiB": "_kib"}.get(unit)
        if suffix is not None:
            assert declaration.name.endswith(suffix), declaration.name
        else:
            assert unit in ("", "s") and not declaration.name.endswith(("_mb", "_ms", "_bytes")), declaration.name


def test_a_bad_duration_names_its_flag() -> None:
    result = CliRunner().invoke(main, ["serve", "m.yaml", "--keep-files", "soon"])
    assert result.exit_code != 0
    assert "--keep-files" in result.output and "'soon' is not a duration" in result.output


def test_the_readers_take_the_declared_defaults() -> None:
    assert Limits() == dataclasses.replace(Limits.of(DEFAULTS), timeout=None)
    assert Limits.of(ServeOptions(manifest="m", max_queue=3)).max_queue == 3
    guard = Guard.from_environ()
    assert (guard.header_timeout, guard.body_timeout) == (DEFAULTS.header_timeout, DEFAULTS.body_timeout)
    command = serve_command()
    assert command[command.index("--grace-period") + 1] == str(int(DEFAULTS.grace_period))
    assert command[command.index("--timeout") + 1] == str(int(DEFAULTS.timeout or 0))


def test_adding_an_option_is_one_line() -> None:
    """A field declared with ``option(...)`` becomes a flag with its default and help, nothing else written."""
    from mlcomponent.options import option

    @dataclasses.dataclass(frozen=True)
    class More(ServeOptions):
        max_queue_wait: float | None = option(None, "Seconds a request may wait in the queue before 503.",
                                              unit="s")

    declaration = next(d for d in dataclasses.fields(More) if d.name == "max_queue_wait")
    command = _click_param(declaration, More)(click.Command("probe"))
    param = command.params[0]
    assert param.opts == ["--max-queue-wait"] and param.type is click.FLOAT and param.default is None
    assert param.help == "Seconds a request may wait in the queue before 503."  # type: ignore[attr-defined]
