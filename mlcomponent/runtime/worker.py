"""The worker process: imports the user's function, holds the model, runs one call at a time.

Started by ``ProcessRunner`` as ``python -m mlcomponent.runtime.worker``. It speaks the
frames of ``runtime/frames.py`` on the pipes it was started with (moved off stdin and
stdout, so a ``print`` in user code goes to stderr and cannot corrupt the protocol).

Imports are kept to the standard library and the loader, so a worker costs little
memory beyond the user's own module and model.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from mlcomponent.errors import InvalidInput
from mlcomponent.protocol.packed import function_data, pack_outputs
from mlcomponent.runtime.frames import CONFIG_ENV, FrameReader, WorkerConfig, widen_pipes, write_frame

MB = 1024 * 1024
FLUSH_AFTER = 0.002  # seconds an answer may wait in the buffer for the answers of a burst behind it


def exception_name(error: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` for the rest."""
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def failure_reply(error: BaseException) -> tuple[Any, ...]:
    """What the parent hears when the function raised: InvalidInput is the client's fault (400)."""
    if isinstance(error, InvalidInput):
        return ("invalid", str(error))
    return ("raised", exception_name(error), str(error), traceback.format_exc())


# --------------------------------------------------------------------------- the memory limit


def peak_rss() -> int:
    """This process's high-water mark of resident memory, in bytes (one getrusage call: cheap)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def over_memory_limit(sink: IO[bytes], limit: int | None) -> bool:
    """After a call: past the limit at any moment, answer ``("memory", peak)`` instead; the caller exits.

    The peak, not the current size: in a pod a moment over the limit is an OOM kill.
    """
    if limit is None:
        return False
    peak = peak_rss()
    if peak <= limit:
        return False
    write_frame(sink, ("memory", peak))
    return True


def prefer_me_for_the_oom_killer() -> None:
    """In a pod the kernel's OOM killer should take this process, not the HTTP server beside it."""
    try:
        with open("/proc/self/oom_score_adj", "w") as stream:
            stream.write("1000")
    except OSError:
        pass  # not Linux, or not allowed: the parent's watch still holds the limit


def serve_calls(function: Any, model_key: str, source: IO[bytes], sink: IO[bytes], spec: Any = None,
                memory_limit: int | None = None) -> None:
    model: Any = None
    numpy = bool(spec is not None and spec.numpy)
    allow_nan = {t.name: t.allow_nan for t in spec.outputs} if spec is not None else {}
    reader = FrameReader(source.fileno())

    last_flush = time.monotonic()

    def reply(message: Any) -> None:
        """Answers to a burst of fast calls go in one write; a slow call's answer goes at once."""
        nonlocal last_flush
        now = time.monotonic()
        flush = not reader.pending or now - last_flush > FLUSH_AFTER
        write_frame(sink, message, flush=flush)
        if flush:
            last_flush = now

    while True:
        message = reader.read()
        if message is None:
            return  # the parent closed the pipe: it is gone or shutting down
        _, parameters, inputs, output_fields, deadline = message
        if deadline is not None and time.time() > deadline:
            reply(("expired",))  # answered 504 already: never start it
            continue
        try:
            result = function(parameters, function_data(inputs, numpy), output_fields, model_key, model)
        except BaseException as error:  # noqa: BLE001 - everything the function raises is reported
            if not over_memory_limit(sink, memory_limit):
                reply(failure_reply(error))
                continue
            return
        if over_memory_limit(sink, memory_limit):
            return
        if not isinstance(result, tuple) or len(result) != 2:
            reply(("bad_return", f"inference returned {type(result).__name__}; it must return a "
                                 "tuple (outputs, model)"))
            continue
        outputs, model = result
        try:
            # numeric numpy arrays travel as raw buffers; other numpy values (any depth) become lists here
            reply(("ok", pack_outputs(outputs, output_fields, allow_nan)))
        except Exception as error:  # noqa: BLE001 - pickling, or a numpy value we cannot convert
            reply(("bad_return", f"inference returned outputs that cannot be sent: {error}"))


def main() -> int:
    source = os.fdopen(os.dup(0), "rb")
    sink = os.fdopen(os.dup(1), "wb")
    widen_pipes(source.fileno(), sink.fileno())
    os.dup2(2, 1)  # user prints go to stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    config = WorkerConfig.from_environ(os.environ)
    del os.environ[CONFIG_ENV]
    from mlcomponent.errors import EntryPointError
    from mlcomponent.runtime.entrypoint import apply_env, load_entry_point
    from mlcomponent.spec.docstring import DocstringSpecError, spec_of

    apply_env(config.env)
    prefer_me_for_the_oom_killer()
    try:
        function = load_entry_point(Path(config.python_path), config.function)
        spec = spec_of(function)
    except EntryPointError as error:
        write_frame(sink, ("fatal", str(error)))
        return 1
    except DocstringSpecError as error:
        write_frame(sink, ("fatal", f"{config.function}: docstring specification: {error}"))
        return 1
    if config.memory_limit is not None and peak_rss() > config.memory_limit:
        write_frame(sink, ("fatal", f"importing {config.function} took {peak_rss() / MB:.0f} MiB, over the memory "
                                    f"limit of {config.memory_limit / MB:.0f} MiB (resourceLimits.memory; "
                                    "--no-limits lifts it locally)"))
        return 1
    write_frame(sink, ("ready", spec))
    gc.collect()
    gc.freeze()  # the loaded module never becomes garbage; keep the cyclic GC off it
    gc.set_threshold(20_000, 50, 100)
    serve_calls(function, config.model_key, source, sink, spec, config.memory_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
