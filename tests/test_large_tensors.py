"""Large tensors at memory speed: packed buffers end to end, checks on whole buffers, numpy optional."""

from __future__ import annotations

import io
import math
import struct
import sys
from pathlib import Path

import orjson
import pytest

from mlcomponent.protocol import binary
from mlcomponent.protocol.packed import Packed, bounds, function_data, nonfinite_index, pack_outputs, packed_problem
from mlcomponent.runtime.frames import FLAG, HEADER, frame, frame_end, load_frame, read_frame, write_frame
from tests.support import HTTP, Server, serve_fixture, wait_ready

BLOCK_NUMPY = '''import sys


class _BlockNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ImportError("numpy is blocked for this test")
        return None


sys.meta_path.insert(0, _BlockNumpy())
'''


def binary_request(name: str, code: str, values: list[float], datatype: str = "FP32",
                   outputs: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": [len(values)],
                                       "parameters": {"binary_data_size": struct.calcsize(code) * len(values)}}],
                           "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs or []]})
    return header + struct.pack(f"<{len(values)}{code}", *values), {"Inference-Header-Content-Length": str(len(header))}


def test_nonfinite_values_are_found_from_the_exponent_bits() -> None:
    for datatype, code in (("FP32", "f"), ("FP64", "d")):
        clean = [float(i) - 50 for i in range(100)] + [3.0e38, -1e-40, 0.0, -0.0]
        assert nonfinite_index(Packed(datatype, struct.pack(f"<{len(clean)}{code}", *clean))) is None
        for bad in (math.nan, math.inf, -math.inf):
            values = [*clean, 1.0, bad, 2.0, bad]
            packed = Packed(datatype, struct.pack(f"<{len(values)}{code}", *values))
            assert nonfinite_index(packed) == len(clean) + 1
            problem = packed_problem(packed, allow_nan=False)
            assert problem is not None and problem.startswith(f"element {len(clean) + 1} is ")
            assert packed_problem(packed, allow_nan=True) is None


def test_packed_tensors_cross_the_pipe_as_out_of_band_buffers() -> None:
    packed = Packed("FP32", struct.pack("<3f", 1, 2, 3))
    message = ("call", [], [{"name": "x", "datatype": "FP32", "data": packed, "shape": [3]}], [], None)
    whole = frame(message)
    (length,) = HEADER.unpack_from(whole)
    assert length & FLAG and frame_end(whole) == len(whole) and frame_end(whole[:-1]) is None
    assert whole.endswith(packed.raw.tobytes())  # the raw bytes, after the pickle
    loaded = load_frame(bytearray(whole))
    assert loaded[2][0]["data"] == packed and loaded[2][0]["data"].tolist() == [1, 2, 3]
    stream = io.BytesIO()
    write_frame(stream, message)
    write_frame(stream, ("ok", [1, 2]))  # a plain frame: no buffers
    stream.seek(0)
    assert read_frame(stream)[2][0]["data"] == packed
    assert read_frame(stream) == ("ok", [1, 2]) and read_frame(stream) is None


def test_the_core_works_without_numpy_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` raises ImportError
    packed = Packed("INT32", struct.pack("<4i", 5, -7, 9, 0))
    assert bounds(packed) == (-7, 9)
    assert function_data([{"name": "x", "datatype": "INT32", "data": packed}], numpy=False)[0]["data"] == [5, -7, 9, 0]
    long_ints = list(range(5000))
    packed_out = pack_outputs([{"name": "y", "datatype": "INT32", "data": long_ints}], [], {})[0]["data"]
    assert isinstance(packed_out, Packed) and packed_out.checked and packed_out.tolist() == long_ints
    body = binary.decode(*reversed(_raw_and_length()))
    assert isinstance(body["inputs"][0]["data"], Packed)


def _raw_and_length() -> tuple[str, bytes]:
    raw, headers = binary_request("x", "f", [1.0, 2.0])
    return headers["Inference-Header-Content-Length"], raw


def test_numpy_outputs_are_packed_only_when_every_value_passes() -> None:
    np = pytest.importorskip("numpy")
    fields = [{"name": "y", "datatype": "FP32"}]
    good = pack_outputs([{"name": "y", "data": np.arange(6, dtype=np.float64).reshape(2, 3)}], fields, {})
    assert isinstance(good[0]["data"], Packed) and good[0]["data"].tolist() == [0, 1, 2, 3, 4, 5]
    for bad in (np.array([1.0, np.nan]), np.array([1e39]), np.array(["a"])):
        assert not isinstance(pack_outputs([{"name": "y", "data": bad}], fields, {})[0]["data"], Packed)
    ints = pack_outputs([{"name": "n", "datatype": "INT32", "data": np.array([2**40])}], [], {})
    assert ints[0]["data"] == [2**40]  # left as a list: the response check names it out of range


@pytest.fixture(scope="module")
def no_numpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("no-numpy")
    (folder / "sitecustomize.py").write_text(BLOCK_NUMPY)
    return folder


def test_binary_round_trip_checks_and_lists_without_numpy(tmp_path: Path, no_numpy: Path) -> None:
    with serve_fixture(tmp_path, "batched.plain", env={"PYTHONPATH": str(no_numpy)}) as server:
        wait_ready(server)
        url = "/v2/models/test-model/infer"
        values = [float(i % 1000 - 500) for i in range(200_000)]
        with server.client() as client:
            raw, headers = binary_request("x", "f", values, outputs=["y", "numpy"])
            answer = client.post(url, content=raw, headers=headers)
            assert answer.status_code == 200, answer.text
            split = int(answer.headers["inference-header-content-length"])
            head = orjson.loads(answer.content[:split])
            sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
            y = answer.content[split:split + sizes[0]]
            assert list(struct.unpack(f"<{len(values)}f", y)) == [v * 2 for v in values]
            assert answer.content[split + sizes[0] + 4:] == b"absent"  # numpy could not be imported there
            nan = list(values)
            nan[1234] = math.nan
            raw, headers = binary_request("x", "f", nan)
            answer = client.post(url, content=raw, headers=headers)
            assert answer.status_code == 400
            assert answer.json()["error"] == "input 'x': element 1234 is nan; FP32 values must be finite"
            far = list(values)
            far[77] = 5000.0
            raw, headers = binary_request("x", "f", far)
            answer = client.post(url, content=raw, headers=headers)
            assert answer.status_code == 400
            assert "element 77 = 5000.0 is outside the declared range [-1000, 1000]" in answer.json()["error"]
        log = server.output()
        assert "Traceback" not in log


def test_a_million_fp32_values_round_trip_in_binary_exactly(echo: Server) -> None:
    wait_ready(echo)
    values = [float(i) * 0.5 for i in range(1_000_000)]
    raw, headers = binary_request("x", "f", values, outputs=["x"])
    answer = HTTP.post(echo.url + "/v2/models/test-model/infer", content=raw, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    split = int(answer.headers["inference-header-content-length"])
    assert answer.content[split:] == raw[len(raw) - 4 * len(values):]


def test_long_json_lists_are_checked_and_packed_from_one_typed_array() -> None:
    """The value check's typed array becomes the packed data (inside ``reusing_checked_arrays`` only),
    with the same bytes and verdicts as packing the list anew; outside it nothing is remembered."""
    from mlcomponent.protocol import packed as packed_module
    from mlcomponent.protocol.packed import pack_checked_lists, reusing_checked_arrays
    from mlcomponent.protocol.tensors import values_problem
    from mlcomponent.protocol.types import InputTensor

    fp32_max = 3.4028234663852886e38
    values = [float(i % 997) * 1.1 for i in range(5000)]
    for datatype in ("FP32", "FP64"):
        fresh = InputTensor("x", datatype, [len(values)], list(values))
        pack_checked_lists([fresh])
        reused = InputTensor("x", datatype, [len(values)], list(values))
        with reusing_checked_arrays():
            assert values_problem(datatype, reused.data, kinds={float}) is None
            checked = packed_module._checked
            assert checked is not None and checked[id(reused.data)][0] is reused.data
            kept = checked[id(reused.data)][1]
            pack_checked_lists([reused])
        assert isinstance(reused.data, Packed) and reused.data.raw.obj is kept  # packed from the check's array
        assert packed_module._checked is None
        assert isinstance(reused.data, Packed) and reused.data.checked and reused.data == fresh.data
    past = fp32_max * (1 + 2**-25)  # rounds to FP32's maximum in a typed array: the exact check decides
    assert values_problem("FP32", [*values, past]) == f"element 5000 = {past} overflows FP32"
    assert values_problem("FP32", [*values, fp32_max]) is None  # the largest FP32 value itself is fine
    assert values_problem("FP32", [*values, float("nan")]) == "element 5000 is nan; FP32 values must be finite"
