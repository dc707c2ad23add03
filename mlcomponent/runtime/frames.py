"""The worker protocol's framing and start-up configuration (standard library only).

Frames are length-prefixed pickles on the worker's own pipes::

    parent → worker   ("call", parameters, inputs, output_fields, deadline)
    worker → parent   ("ready", FunctionSpec) | ("fatal", message)          once, at start
                      ("ok", outputs) | ("raised", type, message, traceback)
                      | ("invalid", message)  (the function raised InvalidInput: a 400)
                      | ("bad_return", message) | ("expired",)            per call, in order
                      | ("memory", peak_bytes)  (over the memory limit; the worker then exits)
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any

HEADER = struct.Struct("<Q")
CONFIG_ENV = "MLCOMPONENT_WORKER_CONFIG"


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def write_frame(stream: IO[bytes], message: Any) -> None:
    stream.write(frame(message))
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return pickle.loads(stream.read(size))


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to load the function; passed in its environment as JSON."""

    python_path: str
    function: str
    model_key: str
    env: dict[str, str]
    memory_limit: int | None = None  # bytes; the worker checks its peak RSS after each call

    def to_environ(self) -> dict[str, str]:
        return {CONFIG_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerConfig:
        return cls(**json.loads(environ[CONFIG_ENV]))
