"""Every ``mlcomponent serve`` option, declared once: name, type, unit, default and help.

``ServeOptions``'s fields are the declaration. The command line (``cli.py`` builds each
click option from its field), the data plane's ``Limits``, the connection guard, the
multipart reader and the rendered Deployment's command read their defaults here.

Units: durations are seconds unless the name ends in ``_ms``; sizes carry their unit in the
name (``_mb``); counts (``max_inputs``, ``max_elements``) are plain numbers of things.

Adding an option is one line in ``ServeOptions`` (the flag, ``--max-queue-wait``, follows from
the name; bools get ``--name/--no-name``)::

    max_queue_wait: float | None = option(None, "Seconds a request may wait in the queue before 503.")

and the code that needs it reads ``settings.options.max_queue_wait``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

OPTIONS_ENV = "MLCOMPONENT_SERVE_OPTIONS"
MB = 1024 * 1024
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """``--keep-files``: '24h', '30m', '90s', '2d', a plain number of seconds, or 'forever' (None)."""
    value = text.strip().lower()
    if value in ("forever", "never", "off"):
        return None
    unit = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; use e.g. 24h, 30m, 90s, 2d or forever") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} must be a positive duration (or forever)")
    return seconds


def _zero_is_none(seconds: float) -> float | None:
    return seconds or None


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


@dataclass(frozen=True)
class Cli:
    """How the command line spells an option, where the field name and type do not say it all."""

    flags: tuple[str, ...] = ()  # more spellings besides --field-name (kept when a name changed)
    off: str | None = None  # a bool's negative flag (None: --no-field-name; "": a plain flag, no negative)
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    low: int | None = None  # an int's range, both ends included
    high: int | None = None
    path: Literal["file", "dir"] | None = None  # a path that must exist as a file, or not be a file
    takes: type | None = None  # the command line's type when it differs from the field's (str: durations)
    shown: str | None = None  # the default as --help shows it, when not the field's value
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value (may raise ValueError)
    argument: bool = False  # a positional argument, not an option


def option(default: Any, help: str, *, unit: str = "", **cli: Any) -> Any:  # noqa: A002 - click's word
    """One serve option's declaration: its default, its help (the unit, when it has one, is said there too)."""
    return field(default=default, metadata={"help": help, "unit": unit, "cli": Cli(**cli)})


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``mlcomponent serve`` takes on its command line (passed to uvicorn's workers as JSON)."""

    manifest: str = field(metadata={"help": "The MLComponent manifest (YAML).", "unit": "",
                                    "cli": Cli(argument=True, parse=_resolved)})
    module_root: str | None = option(None, "Folder pythonPath is relative to. Default: the manifest's folder.",
                                     path="dir", parse=_resolved)
    host: str = option("127.0.0.1", "Interface to listen on.")
    port: int = option(8080, "Port to listen on.", low=1, high=65535)
    data_root: str | None = option(None, "Folder for local boxes, caches and request files. Default: data/ "
                                   "beside the manifest.", path="dir", parse=_resolved)
    boxes: str | None = option(None, "YAML mapping box names to S3 or folders.", path="file",
                               parse=_resolved)
    workers: int | None = option(None, "Worker processes. Default: the manifest's cpu limit in whole cores.")
    timeout: float | None = option(60.0, "The service's limit on one call, in seconds: a call still running "
                                   "this long after it started running is stopped by force (its worker "
                                   "is replaced); a request unanswered this long after arrival gets 504. A "
                                   "client's own deadline ends only its wait. 0: none.", unit="s",
                                   parse=_zero_is_none)
    max_queue: int = option(32768, "Requests waiting per worker before 503: a hard cap on memory.")
    max_queue_wait: float | None = option(5.0, "Seconds a request may expect to wait for the calls ahead and its "
                                          "own call (per worker) before 503 with Retry-After; 0: no budget.", unit="s",
                                          parse=_zero_is_none)
    max_json_body_mb: int = option(64, "JSON body limit, MB.", unit="MB", flags=("--max-json-body",))
    max_upload_mb: int = option(1024, "File upload limit, MB.", unit="MB", flags=("--max-upload",))
    max_inputs: int = option(64, "Inputs per request (and file parts per multipart request).")
    max_elements: int = option(16 * 1024 * 1024, "Elements per input (a count).")
    log_format: str = option("text", "Log lines as text or JSON.", choices=("text", "json"))
    log_level: str = option("info", "Log level (debug, info, warning, error).")
    auth_token_env: str | None = option(None, "Env var holding a bearer token required on data endpoints.")
    auth_token_file: str | None = option(None, "File holding that token.", path="file")
    grace_period: float = option(30.0, "Seconds to drain on SIGTERM.", unit="s")
    isolate: bool = option(True, "Run the function in a child process (crash isolation, hard timeouts).")
    limits: bool = option(True, "Hold the manifest's memory limit on the inference worker (--no-limits: do not).")
    max_batch_size: int | None = option(None, "Rows per merged call, overriding the docstring's Batching "
                                        "(1: no merging).")
    max_batch_delay_ms: float | None = option(None, "Milliseconds a request may wait for its batch to fill, "
                                              "overriding the docstring's Batching.", unit="ms",
                                              flags=("--max-batch-delay",))
    reload: bool = option(False, "Restart when the module's files change (development).", off="")
    hide_errors: bool = option(False, "Answer a failed call with its exception type and request id only; "
                               "the message goes to the log.", off="")
    keep_files: float | None = option(24 * 3600.0, "How long the file box keeps uploads and outputs (e.g. 30m, "
                                      "24h, 7d, forever).", unit="s", takes=str, shown="24h",
                                      metavar="DURATION", parse=parse_duration)
    header_timeout: float = option(10.0, "Seconds a request's headers may take to arrive.", unit="s")
    body_timeout: float = option(30.0, "Seconds a request's body may stop arriving; also the window over which "
                                 "its rate is checked (--min-body-rate-kib).", unit="s")
    max_connections: int | None = option(None, "Open connections per worker. Default: half the open-file limit.")
    max_header_kib: int = option(64, "Size of a request's headers, KiB (431 past it).", unit="KiB", low=1)
    max_headers: int = option(100, "Header fields per request (431 past it).", low=1)
    min_body_rate_kib: float = option(1.0, "KiB per second a request body must average over each "
                                      "--body-timeout window.", unit="KiB")
    write_timeout: float = option(30.0, "Seconds an answer may wait for its client to read it before the "
                                  "connection is closed.", unit="s")
    memory_budget_mb: int | None = option(None, "MB of request bodies and answers each HTTP worker holds before "
                                          "large requests get 503. Default: half of resourceLimits.memory "
                                          "(at least 64).", unit="MB", low=1)
    grpc_port: int | None = option(None, "Also serve the protocol's gRPC service on this port (off by default).")

    @property
    def max_json_body_bytes(self) -> int:
        return self.max_json_body_mb * MB

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MB

    @property
    def max_header_bytes(self) -> int:
        return self.max_header_kib * 1024

    @property
    def min_body_rate_bytes(self) -> float:
        """Bytes per second."""
        return self.min_body_rate_kib * 1024

    @property
    def memory_budget_bytes(self) -> int | None:
        return self.memory_budget_mb * MB if self.memory_budget_mb else None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServeOptions:
        try:
            return cls(**json.loads(environ[OPTIONS_ENV]))
        except KeyError:
            raise RuntimeError(f"{OPTIONS_ENV} is not set; start the service with `mlcomponent serve`") from None


DEFAULTS = ServeOptions(manifest="")  # each option's default, typed: DEFAULTS.grace_period


def declared() -> list[Field[Any]]:
    """The options in ``--help``'s order."""
    return list(fields(ServeOptions))


def cli_of(declaration: Field[Any]) -> Cli:
    cli: Cli = declaration.metadata["cli"]
    return cli


def flag(name: str) -> str:
    """An option's command-line flag: ``grace_period`` -> ``--grace-period``."""
    return "--" + name.replace("_", "-")
