"""What reading the worker's replies with an allow-list costs, per reply, against plain ``pickle.loads``.

    .venv/bin/python benchmarks/worker_replies.py   # a few seconds; prints a table

Both sides decode the same frames with ``runtime/frames.load_frame``: once with no
unpickler (``pickle.loads``, what the parent did before issue 18) and once with
``runtime/messages.AllowList`` (what it does now). Replies: one small output (the
common case), 1,000 plain floats, a 1 MiB FP32 tensor as an out-of-band buffer, and a
reply of 20 outputs each with strings and nested lists.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlcomponent.protocol.packed import Packed  # noqa: E402
from mlcomponent.runtime.frames import frame, load_frame  # noqa: E402
from mlcomponent.runtime.messages import AllowList, Done  # noqa: E402

REPLIES = {
    "one small output": Done([{"name": "y", "datatype": "INT32", "shape": [1], "data": [1]}]),
    "1,000 floats (list)": Done([{"name": "y", "datatype": "FP64", "shape": [1000], "data": [0.5] * 1000}]),
    "1 MiB FP32 (buffer)": Done([{"name": "y", "datatype": "FP32", "shape": [262144],
                                  "data": Packed("FP32", bytes(1 << 20))}]),
    "20 mixed outputs": Done([{"name": f"o{i}", "datatype": "str", "shape": [2, 2], "parameters": {"k": "v"},
                               "data": [["a", "b"], ["c", "d"]]} for i in range(20)]),
}


def per_call(statement: object, number: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=5)) / number  # type: ignore[arg-type]


def main() -> None:
    print("| reply | pickle.loads | AllowList | added per reply |")
    print("|---|---:|---:|---:|")
    for name, reply in REPLIES.items():
        data = bytearray(frame(reply))
        number = 2000 if len(data) < 100_000 else 200
        plain = per_call(lambda data=data: load_frame(data), number)
        allowed = per_call(lambda data=data: load_frame(data, AllowList), number)
        print(f"| {name} | {plain * 1e6:.1f} µs | {allowed * 1e6:.1f} µs | {(allowed - plain) * 1e6:+.1f} µs |")


if __name__ == "__main__":
    main()
