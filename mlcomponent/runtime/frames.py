"""The worker protocol's framing and start-up configuration (standard library only).

Frames are length-prefixed pickles on the worker's own pipes, one typed message each
(``runtime/messages.py``)::

    parent → worker   Call
    worker → parent   Ready | Fatal                                       once, at start
                      Done | Raised | Invalid | BadReturn | Expired       per call, in order
                      | OverMemory  (over the memory limit; the worker then exits)

The parent reads the worker's frames with ``AllowList``: only the types the protocol
uses are rebuilt, so a reply cannot run code in the server (an object whose
``__reduce__`` is ``os._exit`` fails its own call, ``runtime/isolated.py``).

Large tensors (``protocol/packed.py``'s ``Packed``) travel as pickle protocol 5
out-of-band buffers: the pickle holds a reference, the bytes follow it raw, so nothing
is copied into the pickle and no per-element object is made on either side. A frame
with buffers sets the top bit of its length; after the header come the number of
buffers and their sizes, the pickle, then the buffers::

    <Q length>                       plain frame: the pickle
    <Q length | FLAG> <I n> <Q size>*n pickle buffer*n
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any

HEADER = struct.Struct("<Q")
COUNT = struct.Struct("<I")
FLAG = 1 << 63  # the frame carries out-of-band buffers
CONFIG_ENV = "MLCOMPONENT_WORKER_CONFIG"


def frame_parts(message: Any) -> list[Any]:
    """The frame of ``message`` as parts to write in order (large buffers are not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return [HEADER.pack(len(payload)) + payload]
    raws = [b.raw() for b in buffers]
    table = COUNT.pack(len(raws)) + b"".join(HEADER.pack(r.nbytes) for r in raws)
    length = len(table) + len(payload) + sum(r.nbytes for r in raws)
    return [HEADER.pack(length | FLAG) + table + payload, *raws]


def frame(message: Any) -> bytes:
    parts = frame_parts(message)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def frame_end(buffer: bytearray | bytes) -> int | None:
    """The size of the first whole frame in ``buffer``, or None while it is incomplete."""
    if len(buffer) < HEADER.size:
        return None
    (length,) = HEADER.unpack_from(buffer)
    end = HEADER.size + (length & ~FLAG)
    return end if len(buffer) >= end else None


def load_frame(data: bytearray | bytes, unpickler: type[pickle.Unpickler] | None = None) -> Any:
    """The message in one whole frame; its buffers stay views of ``data`` (no copy).

    ``unpickler``: rebuild with this class (``AllowList``) rather than plain ``pickle.loads``.
    """
    (length,) = HEADER.unpack_from(data)
    if not length & FLAG:
        if unpickler is not None:
            return unpickler(io.BytesIO(memoryview(data)[HEADER.size:])).load()
        return pickle.loads(memoryview(data)[HEADER.size:])
    view = memoryview(data)
    (count,) = COUNT.unpack_from(view, HEADER.size)
    offset = HEADER.size + COUNT.size
    sizes = [HEADER.unpack_from(view, offset + HEADER.size * i)[0] for i in range(count)]
    offset += HEADER.size * count
    payload_end = len(view) - sum(sizes)
    buffers = []
    position = payload_end
    for size in sizes:
        buffers.append(view[position:position + size])
        position += size
    if unpickler is not None:
        return unpickler(io.BytesIO(view[offset:payload_end]), buffers=buffers).load()
    return pickle.loads(view[offset:payload_end], buffers=buffers)


PIPE_SIZE = 1 << 20  # Linux's default cap for unprivileged processes (/proc/sys/fs/pipe-max-size)


def widen_pipes(*fds: int) -> None:
    """Ask for 1 MB pipe buffers (Linux; 64 KB by default): a large tensor crosses in a few wake-ups."""
    import fcntl

    for fd in fds:
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        except OSError:
            pass  # not Linux, or over the cap: the default size works, only slower


class FrameReader:
    """Frames from a pipe's file descriptor, several per read: ``pending`` says whether another
    whole frame is already here, so the worker answers a burst of calls with one write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    @property
    def pending(self) -> bool:
        return frame_end(self.buffer) is not None

    def read(self) -> Any:
        """The next message (blocking until it is whole), or None at the end of the stream."""
        while (end := frame_end(self.buffer)) is None:
            chunk = os.read(self.fd, PIPE_SIZE)
            if not chunk:
                return None
            self.buffer += chunk
        if end == len(self.buffer):
            whole, self.buffer = self.buffer, bytearray()  # writable, and no copy for a large frame
        else:
            whole = self.buffer[:end]
            del self.buffer[:end]
        return load_frame(whole)


def write_frame(stream: IO[bytes], message: Any, flush: bool = True) -> None:
    for part in frame_parts(message):
        stream.write(part)
    if flush:
        stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    if not length & FLAG:
        return pickle.loads(stream.read(length))
    data = bytearray(HEADER.size + (length & ~FLAG))  # writable: numpy arrays over it can be written
    data[:HEADER.size] = header
    view = memoryview(data)
    filled = HEADER.size
    while filled < len(data):
        got = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not got:
            return None
        filled += got
    return load_frame(data)


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
