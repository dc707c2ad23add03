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
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from mlcomponent.errors import InvalidInput
from mlcomponent.protocol.packed import function_data, pack_outputs
from mlcomponent.runtime.frames import CONFIG_ENV, FrameReader, WorkerConfig, frame_parts, widen_pipes, write_frame
from mlcomponent.runtime.messages import BadReturn, Call, Done, Expired, Fatal, Invalid, OverMemory, Raised, Ready
from mlcomponent.runtime.tree import become_subreaper, kill_descendants

MB = 1024 * 1024
FLUSH_AFTER = 0.002  # seconds an answer may wait in the buffer for the answers of a burst behind it


def exception_name(error: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Error`` for the rest."""
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def failure_reply(error: BaseException) -> Invalid | Raised:
    """What the parent hears when the function raised: InvalidInput is the client's fault (400)."""
    if isinstance(error, InvalidInput):
        return Invalid(str(error))
    return Raised(exception_name(error), str(error), traceback.format_exc())


# --------------------------------------------------------------------------- the memory limit


def own_peak() -> int:
    """This process image's own high-water mark of resident memory, in bytes.

    ``getrusage`` is one cheap call, but after ``exec`` it keeps the high-water mark of the
    process that forked us (the HTTP server, possibly far larger than this worker). When
    it reads over a limit, ``VmHWM`` (which starts afresh at ``exec``) says what is ours.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def exact_peak() -> int:
    try:
        with open("/proc/self/status", "rb") as stream:
            for line in stream:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return own_peak()


def over_limit(limit: int | None) -> int | None:
    """The peak, when it is past ``limit`` (in a pod a moment over the limit is an OOM kill), else None."""
    if limit is None or own_peak() <= limit:
        return None
    peak = exact_peak()
    return peak if peak > limit else None


def prefer_me_for_the_oom_killer() -> None:
    """In a pod the kernel's OOM killer should take this process, not the HTTP server beside it."""
    try:
        with open("/proc/self/oom_score_adj", "w") as stream:
            stream.write("1000")
    except OSError:
        pass  # not Linux, or not allowed: the parent's watch still holds the limit


def run_call(function: Any, call: Call, key: str, model: Any, numpy: bool, allow_nan: dict[str, bool],
             ) -> tuple[Done | Raised | Invalid | BadReturn, Any]:
    """One call's reply (not yet encoded) and the model it leaves."""
    try:
        result = function(call.parameters, function_data(call.inputs, numpy), call.output_fields, key, model)
    except BaseException as error:  # noqa: BLE001 - everything the function raises is reported
        return failure_reply(error), model
    if not isinstance(result, tuple) or len(result) != 2:
        return BadReturn(f"inference returned {type(result).__name__}; it must return a tuple (outputs, model)"), model
    outputs, model = result
    try:
        # numeric numpy arrays travel as raw buffers; other numpy values (any depth) become lists here
        return Done(pack_outputs(outputs, call.output_fields, allow_nan)), model
    except Exception as error:  # noqa: BLE001 - a numpy value we cannot convert
        return BadReturn(f"inference returned outputs that cannot be sent: {error}"), model


def encode(message: Any) -> list[Any]:
    """The frame of a reply; a reply that cannot be pickled becomes that call's ``BadReturn``."""
    try:
        return frame_parts(message)
    except Exception as error:  # noqa: BLE001 - pickling runs the user's __reduce__: anything goes
        return frame_parts(BadReturn(f"inference returned outputs that cannot be sent: {error}"))


def serve_calls(function: Any, key: str, source: IO[bytes], sink: IO[bytes], spec: Any = None,
                memory_limit: int | None = None) -> None:
    """Run calls in order until the parent closes the pipe.

    The memory limit is checked before each call (growth since the last reply is not this
    call's: the worker retires without starting it) and after its reply is encoded (the
    encoding is part of the call's use).
    """
    model: Any = None
    numpy = bool(spec is not None and spec.numpy)
    allow_nan = {t.name: t.allow_nan for t in spec.outputs} if spec is not None else {}
    reader = FrameReader(source.fileno())

    last_flush = time.monotonic()

    def send(parts: list[Any]) -> None:
        """Answers to a burst of fast calls go in one write; a slow call's answer goes at once."""
        nonlocal last_flush
        for part in parts:
            sink.write(part)
        now = time.monotonic()
        if not reader.pending or now - last_flush > FLUSH_AFTER:
            sink.flush()
            last_flush = now

    while True:
        call = reader.read()
        if call is None:
            kill_descendants(os.getpid())  # the parent closed the pipe: it is gone or shutting down
            return
        assert isinstance(call, Call), f"the worker protocol sends Call, not {type(call).__name__}"
        if call.deadline is not None and time.time() > call.deadline:
            send(frame_parts(Expired()))  # answered 504 already: never start it
            continue
        if (peak := over_limit(memory_limit)) is not None:
            write_frame(sink, OverMemory(peak, between_calls=True))
            return
        strays = threading.active_count() - 1
        reply, model = run_call(function, call, key, model, numpy, allow_nan)
        parts = encode(reply)
        if (peak := over_limit(memory_limit)) is not None:
            write_frame(sink, OverMemory(peak, stray_threads=strays))
            return
        send(parts)


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
    become_subreaper()  # before the user's module runs: whatever it starts stays in our tree
    try:
        function = load_entry_point(Path(config.python_path), config.function)
        spec = spec_of(function)
    except EntryPointError as error:
        write_frame(sink, Fatal(str(error)))
        return 1
    except DocstringSpecError as error:
        write_frame(sink, Fatal(f"{config.function}: docstring specification: {error}"))
        return 1
    if (peak := over_limit(config.memory_limit)) is not None:
        write_frame(sink, Fatal(f"importing {config.function} took {peak / MB:.0f} MiB, over the memory limit of "
                                f"{(config.memory_limit or 0) / MB:.0f} MiB (resourceLimits.memory; --no-limits "
                                "lifts it locally)"))
        return 1
    write_frame(sink, Ready(spec))
    gc.collect()
    gc.freeze()  # the loaded module never becomes garbage; keep the cyclic GC off it
    gc.set_threshold(20_000, 50, 100)
    serve_calls(function, config.model_key, source, sink, spec, config.memory_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
