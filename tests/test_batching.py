"""Adaptive batching (docstring `Batching:`), and numpy data for functions that opt in.

Most tests drive the real data plane and worker process in-process (no HTTP), sending
requests concurrently with `asyncio.gather`: requests that reach the batcher in the same
loop iteration form one batch, deterministically (no sleeps, no timing assertions).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mlcomponent.errors import MLComponentError
from mlcomponent.metrics import Metrics
from mlcomponent.protocol import binary
from mlcomponent.runtime.dataplane import DataPlane
from mlcomponent.runtime.health import State
from mlcomponent.runtime.service import Service
from mlcomponent.settings import ServeOptions, Settings
from mlcomponent.spec.docstring import DocstringSpecError, parse_docstring
from tests.support import HTTP, deadline_us, run_cli, serve_fixture, wait_ready, write_manifest


class Recorder(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def batch_sent(self, size: int, waits: list[float]) -> None:
        super().batch_sent(size, waits)
        self.batches.append(size)


@asynccontextmanager
async def served(tmp_path: Path, function: str, **options: Any) -> AsyncIterator[tuple[DataPlane, Recorder]]:
    manifest = write_manifest(tmp_path, function)
    settings = Settings.build(ServeOptions(manifest=str(manifest), data_root=str(tmp_path / "data"), **options),
                              os.environ)
    recorder = Recorder()
    service = Service(settings, sync_boxes=False, observer=recorder)
    await service.start()
    assert service.dataplane.health.state is State.READY
    try:
        yield service.dataplane, recorder
    finally:
        await service.stop()


def run_served(tmp_path: Path, function: str, scenario: Callable[[DataPlane, Recorder], Awaitable[None]],
               **options: Any) -> None:
    """Run ``scenario`` against the data plane of ``function`` served in-process (with its worker)."""
    async def main() -> None:
        async with served(tmp_path, function, **options) as (plane, recorder):
            await scenario(plane, recorder)
    asyncio.run(main())


async def infer(plane: DataPlane, body: dict[str, Any], uploads: dict[str, bytes] | None = None) -> Any:
    """The checked response, or the error the client would get."""
    files = plane.request_files()
    try:
        for name, content in (uploads or {}).items():
            target = files.upload_target(name, f"{name}.bin")
            target.write_bytes(content)
            files.uploaded[name] = (target, "application/octet-stream")
        response = await plane.infer(body, files)
        return {o.name: (o.shape, o.data) for o in response.outputs}, response
    except MLComponentError as error:
        return error
    finally:
        files.cleanup()


def rows_body(rows: list[list[float]], **parameters: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": rows}],
            "parameters": parameters}


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("BATCH_LOG", str(path))
    return path


def calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_concurrent_requests_merge_into_one_call_and_split_back_by_rows(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        results = await asyncio.gather(
            infer(plane, rows_body([[1, 2]], scale=10)),
            infer(plane, rows_body([[3, 4], [5, 6]], scale=10)),
            infer(plane, rows_body([[7, 8], [9, 10], [11, 12]], scale=10)))
        outputs = [r[0] for r in results]
        assert outputs[0]["y"] == ([1, 2], [10, 20])
        assert outputs[1]["y"] == ([2, 2], [30, 40, 50, 60])
        assert outputs[2]["y"] == ([3, 2], [70, 80, 90, 100, 110, 120])
        assert [o["call_rows"][1] for o in outputs] == [[6], [6, 6], [6, 6, 6]]
        assert recorder.batches == [3]
    run_served(tmp_path, "batched.rows", scenario)
    assert calls(log) == [6]


def test_mixed_shapes_merge_along_the_first_dimension_only(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        results = await asyncio.gather(
            infer(plane, rows_body([[1, 2, 3]])),
            infer(plane, rows_body([[4, 5, 6], [7, 8, 9]])),
            infer(plane, rows_body([[1, 2, 3, 4]])),  # another row width: its own call
            infer(plane, rows_body([[1, 2, 3]], scale=2)))  # other parameters: its own call
        assert results[0][0]["y"] == ([1, 3], [1, 2, 3])
        assert results[1][0]["y"] == ([2, 3], [4, 5, 6, 7, 8, 9])
        assert results[2][0]["y"] == ([1, 4], [1, 2, 3, 4])
        assert results[3][0]["y"] == ([1, 3], [2, 4, 6])
        assert sorted(recorder.batches) == [1, 1, 2]
    run_served(tmp_path, "batched.rows", scenario)
    assert sorted(calls(log)) == [1, 1, 3]


def test_a_batch_never_exceeds_max_batch_size_rows(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        results = await asyncio.gather(*(infer(plane, rows_body([[i, i], [i, i]])) for i in range(5)))
        assert [r[0]["y"][1] for r in results] == [[i] * 4 for i in range(5)]
    run_served(tmp_path, "batched.rows", scenario, max_batch_size=4)
    assert sorted(calls(log)) == [2, 4, 4]


def test_a_bad_output_dimension_is_found_by_rerunning_halves_each_member_its_own_error(tmp_path: Path,
                                                                                       log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        results = await asyncio.gather(*(infer(plane, rows_body([[1, 2]] * n, mode="bad_rows")) for n in (1, 2)))
        for error, rows in zip(results, (1, 2), strict=True):
            assert isinstance(error, MLComponentError) and error.status == 500
            assert f"first dimension {rows - 1} does not match the batch's {rows} rows" in error.message
            assert "merged" not in error.message
    run_served(tmp_path, "batched.rows", scenario)
    assert calls(log) == [3, 1, 2]  # the merged call, then each half alone


def test_a_function_that_raises_for_every_member_fails_each_with_its_own_error(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        results = await asyncio.gather(*(infer(plane, rows_body([[1, 2]], mode="raise")) for _ in range(3)))
        for error in results:
            assert isinstance(error, MLComponentError) and error.status == 500
            assert error.message == "inference raised ValueError: no rows today"
    run_served(tmp_path, "batched.rows", scenario)
    assert calls(log) == [3, 2, 1, 1, 1]  # halves down to single requests


def test_each_member_keeps_its_own_deadline_and_nothing_runs_twice(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        short = rows_body([[1, 2]], sleep=1.5)
        short["parameters"]["timeout"] = deadline_us(0.2)
        impatient, patient = await asyncio.gather(infer(plane, short), infer(plane, rows_body([[3, 4]], sleep=1.5)))
        assert isinstance(impatient, MLComponentError) and impatient.status == 504
        assert "merged with 1 other request(s) into one call, which goes on" in impatient.message
        assert patient[0]["y"] == ([1, 2], [3, 4])
        assert recorder.batches == [2]
    run_served(tmp_path, "batched.rows", scenario)
    assert calls(log) == [2]


def test_a_deadline_that_passes_while_waiting_to_be_batched_is_504_and_never_runs(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        busy = asyncio.ensure_future(infer(plane, rows_body([[1, 2]], sleep=1.5, scale=3)))
        await asyncio.sleep(0)  # let it reach the function first
        waiting = rows_body([[1, 2]])
        waiting["parameters"]["timeout"] = deadline_us(0.2)
        error = await infer(plane, waiting)
        assert isinstance(error, MLComponentError) and error.status == 504
        assert "while it waited to be batched; it did not run" in error.message
        assert (await busy)[0]["y"] == ([1, 2], [3, 6])
    run_served(tmp_path, "batched.rows", scenario)
    assert calls(log) == [1]


def test_file_inputs_batch_as_lists_of_paths_and_file_outputs_split_back(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        body = {"inputs": [{"name": "doc", "datatype": "FILE"}], "outputs": [{"name": "size"}, {"name": "copy"}]}
        contents = [b"a", b"bb", b"ccc"]
        results = await asyncio.gather(*(infer(plane, body, {"doc": c}) for c in contents))
        for content, (outputs, _) in zip(contents, results, strict=True):
            assert outputs["size"] == ([1], [len(content)])
            key = outputs["copy"][1][0]
            assert b"".join(plane.file_box.read_chunks(key)) == content
        assert recorder.batches == [3]
    run_served(tmp_path, "batched.files", scenario)
    assert calls(log) == [3]


def test_batch_size_and_queue_delay_histograms_are_in_the_metrics(tmp_path: Path, log: Path) -> None:
    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        await asyncio.gather(*(infer(plane, rows_body([[1, 2]])) for _ in range(3)))
        await infer(plane, rows_body([[1, 2]]))
        text = recorder.render().decode()
        assert "mlcomponent_batch_size_count 2.0" in text
        assert "mlcomponent_batch_size_sum 4.0" in text
        assert 'mlcomponent_batch_size_bucket{le="2.0"} 1.0' in text
        assert "mlcomponent_batch_queue_seconds_count 4.0" in text
    run_served(tmp_path, "batched.rows", scenario)


def test_numpy_data_reaches_the_function_as_flat_arrays_from_json_and_binary(tmp_path: Path) -> None:
    pytest.importorskip("numpy")

    async def scenario(plane: DataPlane, recorder: Recorder) -> None:
        outputs, _ = await infer(plane, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                                                     "data": [1, 2, 3]}]})
        assert outputs["kind"][1] == ["numpy.ndarray"]
        assert list(outputs["y"][1]) == [2, 4, 6]
        values = [float(i) for i in range(100_000)]
        header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values)],
                                           "parameters": {"binary_data_size": 4 * len(values)}}]})
        raw = header + struct.pack(f"<{len(values)}f", *values)
        outputs, response = await infer(plane, binary.decode(raw, str(len(header))))
        assert outputs["kind"][1] == ["numpy.ndarray"]
        assert type(outputs["y"][1]).__name__ == "Packed"  # never a list on the way back either
        assert outputs["y"][1].tolist() == [v * 2 for v in values]
    run_served(tmp_path, "batched.arrays", scenario)


def test_batching_flags_need_a_declaration_and_a_batchable_shape(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    result = run_cli("serve", str(manifest), "--max-batch-size", "8", "--port", "1")
    assert result.returncode == 1
    assert "declare a `Batching:` section" in result.stderr
    manifest = write_manifest(tmp_path, "batched.arrays")  # Batching with max_batch_size 1, shape [1] output
    result = run_cli("serve", str(manifest), "--max-batch-size", "8", "--port", "1")
    assert result.returncode == 1
    assert "output 'kind' has shape [1]; a function that merges requests needs a first dimension of -1" in result.stderr


def test_batching_with_several_http_workers_over_http(tmp_path: Path) -> None:
    with serve_fixture(tmp_path, "batched.rows", "--workers", "2", "--max-batch-delay", "5") as server:
        wait_ready(server)

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/v2/models/test-model/infer",
                                                          json=rows_body([[i, i + 1]])) for i in range(24)))
        answers = asyncio.run(main())
        assert [a.status_code for a in answers] == [200] * 24
        assert [a.json()["outputs"][0]["data"] for a in answers] == [[i, i + 1] for i in range(24)]
        batching = HTTP.get(server.url + "/v2/models/test-model").json()["parameters"]["batching"]
        assert batching == {"max_batch_size": 8, "max_batch_delay_ms": 1000, "data": "lists"}  # the docstring's
        metrics = HTTP.get(server.url + "/metrics").text
        count = next(line for line in metrics.splitlines() if line.startswith("mlcomponent_batch_size_count"))
        sent = next(line for line in metrics.splitlines() if line.startswith("mlcomponent_batch_size_sum"))
        assert float(sent.split()[1]) == 24 and 1 <= float(count.split()[1]) <= 24


SPEC = """Do it.

    Inputs:
        x (FP32, shape={shape}): rows.

    Outputs:
        y (FP32, shape=[-1]): one per row.

    Batching:
{batching}
"""


@pytest.mark.parametrize(("batching", "shape", "problem"), [
    ("        max_batch_size: 0", "[-1]", "max_batch_size must be a whole number of rows, at least 1"),
    ("        max_batch_size: 4\n        max_batch_delay: soon", "[-1]", "max_batch_delay must be milliseconds"),
    ("        max_batch_size: 4\n        data: pandas", "[-1]", "data must be `lists` (the default) or `numpy`"),
    ("        max_rows: 4", "[-1]", "unknown key 'max_rows'"),
    ("        max_batch_size: 4", "[3, 4]", "input 'x' has shape [3, 4]; a function that merges requests needs"),
])
def test_batching_section_errors_name_the_problem(batching: str, shape: str, problem: str) -> None:
    with pytest.raises(DocstringSpecError) as caught:
        parse_docstring(SPEC.format(batching=batching, shape=shape))
    assert problem in str(caught.value)


def test_batching_section_reads_sizes_delays_and_data() -> None:
    spec = parse_docstring(SPEC.format(batching="        max_batch_size: 32\n        max_batch_delay: 0.5s\n"
                                                "        data: numpy", shape="[-1, 4]"))
    assert spec.batching is not None
    assert (spec.batching.max_batch_size, spec.batching.max_batch_delay, spec.numpy, spec.merges) == (32, 0.5, True, True)
    spec = parse_docstring(SPEC.format(batching="        data: numpy", shape="[3]"))  # numpy without merging
    assert spec.numpy and not spec.merges
