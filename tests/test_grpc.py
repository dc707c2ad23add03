"""The gRPC transport over real processes: the protocol's service, each status code with REST's
message, deadlines, a crashing worker, auth, health, metrics, FILE keys and shutdown draining.

Calls go through the protocol's own generated stub (``open_inference.grpc``), as any client's would.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from open_inference.grpc import protocol as pb
from open_inference.grpc.service import GRPCInferenceServiceStub

from mlcomponent import client as mc
from tests.support import (
    HTTP,
    Server,
    calls_logged,
    deadline_us,
    free_port,
    metric,
    run_cli,
    scrape,
    serve,
    wait_ready,
    write_manifest,
)

MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"


class GrpcServer:
    def __init__(self, server: Server, port: int) -> None:
        self.http = server
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = GRPCInferenceServiceStub(self.channel)

    def infer(self, request: pb.ModelInferRequest, **kwargs: Any) -> pb.ModelInferResponse:
        return self.stub.ModelInfer(request, **kwargs)  # type: ignore[no-any-return]

    def error(self, request: pb.ModelInferRequest, **kwargs: Any) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            self.infer(request, **kwargs)
        return caught.value


@contextmanager
def serve_grpc(folder: Path, function: str, *args: str, env: dict[str, str] | None = None,
               wait_path: str = "/v2/health/live") -> Iterator[GrpcServer]:
    port = free_port()
    with serve(write_manifest(folder, function), "--grpc-port", str(port), *args, data_root=folder / "data",
               env=env, wait_path=wait_path) as server:
        grpc_server = GrpcServer(server, port)
        try:
            yield grpc_server
        finally:
            grpc_server.channel.close()


def request(*inputs: tuple[str, str, list[int], Any], outputs: list[str] | None = None, raw: bool = True,
            model: str = MODEL, **parameters: Any) -> pb.ModelInferRequest:
    """A ModelInferRequest: raw contents (as tritonclient sends them) or typed ones."""
    message = pb.ModelInferRequest(model_name=model, id="req-7")
    for name, datatype, shape, values in inputs:
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        if datatype in ("BYTES", "str", "FILE"):
            encoded = [v.encode() for v in values]
            if raw:
                message.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in encoded))
            else:
                tensor.contents.bytes_contents.extend(encoded)
        elif raw:
            dtype = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}[datatype]
            message.raw_input_contents.append(np.asarray(values, dtype=dtype).tobytes())
        else:
            field = {"FP64": "fp64_contents", "INT32": "int_contents"}.get(datatype, "fp32_contents")
            getattr(tensor.contents, field).extend(values)
    for name in outputs or []:
        message.outputs.add(name=name)
    for key, value in parameters.items():
        parameter = message.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value
    return message


def raw_output(response: pb.ModelInferResponse, name: str) -> Any:
    index = [o.name for o in response.outputs].index(name)
    output = response.outputs[index]
    chunk = response.raw_output_contents[index]
    if output.datatype == "BYTES":
        values, offset = [], 0
        while offset < len(chunk):
            (size,) = struct.unpack_from("<I", chunk, offset)
            values.append(chunk[offset + 4:offset + 4 + size].decode())
            offset += 4 + size
        return values
    dtype = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}[output.datatype]
    return np.frombuffer(chunk, dtype=dtype).reshape(list(output.shape)).tolist()


# --------------------------------------------------------------------------- the service, the codes


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    with serve_grpc(tmp_path_factory.mktemp("grpc-echo"), "echo.inference", "--max-json-body", "1") as server:
        yield server


def test_health_and_metadata_rpcs(echo: GrpcServer) -> None:
    stub = echo.stub
    assert stub.ServerLive(pb.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb.ServerReadyRequest()).ready is True
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready is True
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "mlcomponent" and "binary_tensor_data" in server.extensions
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert (meta.name, meta.platform) == (MODEL, "mlcomponent_python")
    health = health_pb2_grpc.HealthStub(echo.channel)
    for service in ("", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_raw_contents_round_trip_and_strings_come_back_as_bytes(echo: GrpcServer) -> None:
    message = request(("f", "FP32", [2, 2], [[1.5, 2], [3, -4.25]]), ("d", "FP64", [1], [1e300]),
                      ("i", "INT32", [2], [2147483647, -2147483648]), ("s", "str", [2], ["héllo", ""]),
                      ("b", "BYTES", [1], ["abc"]), outputs=["f", "d", "i", "s", "b", "loads"])
    response, call = echo.stub.ModelInfer.with_call(message, metadata=(("x-request-id", "trace-grpc-1"),))
    assert response.id == "req-7" and response.model_name == MODEL
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("f", "FP32", [2, 2]), ("d", "FP64", [1]), ("i", "INT32", [2]), ("s", "BYTES", [2]), ("b", "BYTES", [1]),
        ("loads", "INT32", [1])]
    assert raw_output(response, "f") == [[1.5, 2], [3, -4.25]]
    assert raw_output(response, "d") == [1e300]
    assert raw_output(response, "i") == [2147483647, -2147483648]
    assert raw_output(response, "s") == ["héllo", ""] and raw_output(response, "b") == ["abc"]
    assert ("x-request-id", "trace-grpc-1") in call.trailing_metadata()


def test_typed_contents_are_answered_in_typed_contents(echo: GrpcServer) -> None:
    message = request(("x", "FP32", [3], [0.5, 1, 2]), ("s", "BYTES", [1], ["z"]), outputs=["x", "s"], raw=False)
    response = echo.infer(message)
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == [0.5, 1, 2]
    assert list(response.outputs[1].contents.bytes_contents) == [b"z"]


def test_parameters_reach_the_function_and_reserved_ones_never_do(echo: GrpcServer) -> None:
    message = request(("x", "INT32", [1], [1]), outputs=["parameters"], mode="fast", threshold=0.5, verbose=True,
                      priority=3, timeout=5_000_000, sequence_id=9, sequence_start=True, sequence_end=False,
                      binary_data_output=True, headers="{}")
    seen = ast.literal_eval(raw_output(echo.infer(message), "parameters")[0])
    assert sorted(seen, key=lambda p: p["name"]) == [  # a protobuf map keeps no order
        {"name": "mode", "value": "fast"}, {"name": "threshold", "value": 0.5}, {"name": "verbose", "value": True}]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "other", "inputs": []}, grpc.StatusCode.NOT_FOUND),
        ({"inputs": [("x", "FP16", [1], [1.0])]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"inputs": [("x", "FP32", [2, 2], [1.0, 2.0, 3.0])]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"inputs": [("x", "INT32", [1], [1])], "parameters": {"timeout": "soon"}}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["unknown-model", "unknown-datatype", "shape-mismatch", "bad-timeout"],
)
def test_errors_are_their_grpc_codes_with_the_rest_messages(echo: GrpcServer, body: dict[str, Any],
                                                             code: grpc.StatusCode) -> None:
    inputs = body["inputs"]
    error = echo.error(request(*inputs, model=body.get("model", MODEL), raw=False, **body.get("parameters", {})))
    assert error.code() == code
    rest_body = {"inputs": [{"name": n, "datatype": t, "shape": s, "data": d} for n, t, s, d in inputs],
                 "parameters": body.get("parameters", {})}
    rest = HTTP.post(f"{echo.http.url}/v2/models/{body.get('model', MODEL)}/infer", json=rest_body)
    assert rest.status_code in (400, 404) and error.details() == rest.json()["error"]


def test_malformed_messages_are_invalid_argument_and_the_service_goes_on(echo: GrpcServer) -> None:
    infer = echo.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as malformed:
        infer(b"\xff\xff\xff")
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.value.details().startswith("malformed ModelInferRequest")
    mismatched = request(("x", "INT32", [1], [1]), ("y", "INT32", [1], [2]))
    del mismatched.raw_input_contents[1]
    error = echo.error(mismatched)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents has 1 entries for 2" in error.details()
    assert raw_output(echo.infer(request(("x", "INT32", [1], [5]), outputs=["x"])), "x") == [5]


def test_a_message_over_the_size_limit_is_resource_exhausted(echo: GrpcServer) -> None:
    big = request(("x", "FP32", [300_000], np.zeros(300_000)))  # 1.2 MB against --max-json-body 1 (MB)
    assert echo.error(big).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert echo.stub.ServerLive(pb.ServerLiveRequest()).live is True


def test_grpc_requests_are_counted_apart_from_http(echo: GrpcServer) -> None:
    prefix = 'mlcomponent_requests_total{endpoint="infer",status="%s",transport="grpc"}'
    before = metric(scrape(echo.http), prefix % "OK"), metric(scrape(echo.http), prefix % "INVALID_ARGUMENT")
    echo.infer(request(("x", "INT32", [1], [1])))
    echo.error(request(("x", "INT32", [2], [1])))
    after = metric(scrape(echo.http), prefix % "OK"), metric(scrape(echo.http), prefix % "INVALID_ARGUMENT")
    assert after == (before[0] + 1, before[1] + 1)
    assert metric(scrape(echo.http), 'mlcomponent_requests_total{endpoint="infer",status="200",transport="http"}') == 0


def test_reflection_lists_the_service_for_grpcurl(echo: GrpcServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(echo.channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def _policies(pid: int) -> dict[str, set[int]]:
    """The scheduling policies of a process's threads, by thread name (the main thread as "loop")."""
    found: dict[str, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            policy = os.sched_getscheduler(int(tid))
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        found.setdefault("loop" if int(tid) == pid else name, set()).add(policy)
    return found


def test_grpcs_threads_do_not_preempt_the_event_loop(echo: GrpcServer) -> None:
    """grpcio's poller and I/O threads wake several times a call: as batch threads they wait for the loop's
    thread to yield instead of preempting it; the loop's thread and the worker stay normal."""
    echo.infer(request(("x", "INT32", [1], [1])))
    pid = echo.http.process.pid
    policies = _policies(pid)
    assert policies["loop"] == {os.SCHED_OTHER}
    for grpcs in ("event_engine", "grpc_global_tim", "lifeguard"):
        assert policies[grpcs] == {os.SCHED_BATCH}, policies
    assert os.SCHED_BATCH in policies["python"], policies  # grpcio's poller (asyncio's own threads stay normal)
    workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert workers and all(_policies(int(worker))["loop"] == {os.SCHED_OTHER} for worker in workers)


def test_only_the_threads_started_inside_become_batch() -> None:
    from threading import Thread

    from mlcomponent.grpc.server import threads_started_here_yield

    seen: list[int] = []
    with threads_started_here_yield():
        inside = Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
        inside.start()
        inside.join()
    after = Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    after.start()
    after.join()
    assert seen == [os.SCHED_BATCH, os.SCHED_OTHER]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_the_python_client_and_cli_speak_grpc(echo: GrpcServer) -> None:
    with mc.Client(f"grpc://{echo.target}/{MODEL}") as client:
        assert client.live() and client.ready()
        result = client.infer([{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]},
                               {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hé"]}],
                              outputs=["x", "s"], request_id="cli-1")
        assert result["x"].tolist() == [1.5, 2.5] and result["s"].tolist() == ["hé"] and result.id == "cli-1"
        with pytest.raises(mc.BadRequestError, match=r"input 'x': shape \[3\] needs 3 elements, data has 1"):
            client.infer([{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}])
        with pytest.raises(mc.BadRequestError, match="datatype 'FP16' cannot be sent over gRPC"):
            client.infer([{"name": "x", "datatype": "FP16", "shape": [1], "data": [1]}])
    with mc.Client(echo.target, transport="grpc", model="other") as other, pytest.raises(mc.NotFoundError):
        other.metadata()

    async def async_call() -> Any:
        async with mc.AsyncClient(f"grpc://{echo.target}", MODEL) as client:
            return (await client.infer([{"name": "x", "datatype": "INT32", "shape": [1], "data": [4]}],
                                       outputs=["x"]))["x"].tolist()

    assert asyncio.run(async_call()) == [4]
    with mc.Client(f"grpc://127.0.0.1:{free_port()}/{MODEL}", timeout=5) as nobody, pytest.raises(mc.ServiceUnavailable):
        nobody.metadata()
    printed = run_cli("infer", f"grpc://{echo.target}/{MODEL}", "-i", "x=1,2", "--output", "x", "--json")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["outputs"] == [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]


# --------------------------------------------------------------------------- deadlines, crashes, the queue


@pytest.fixture(scope="module")
def behaviours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrpcServer, Path]]:
    folder = tmp_path_factory.mktemp("grpc-behaviours")
    log = folder / "calls.log"
    with serve_grpc(folder, "behaviours.inference", "--max-queue", "1", env={"CALL_LOG": str(log)}) as server:
        yield server, log


def do(action: str, **params: Any) -> pb.ModelInferRequest:
    return request(("x", "INT32", [1], [1]), do=action, **params)


def test_a_function_that_raises_is_internal_with_its_message(behaviours: tuple[GrpcServer, Path]) -> None:
    server, _ = behaviours
    error = server.error(do("raise"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "inference raised RuntimeError: asked to fail"


def test_a_crashing_worker_is_internal_and_the_next_call_succeeds(behaviours: tuple[GrpcServer, Path]) -> None:
    server, _ = behaviours
    error = server.error(do("exit", tag="dies"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "the worker process running inference died (exited with status 1)" in error.details()
    assert server.infer(do("echo", tag="after")).outputs[0].name == "x"


def test_a_grpc_deadline_ends_the_wait_and_the_call_runs_once(behaviours: tuple[GrpcServer, Path],
                                                               tmp_path: Path) -> None:
    """The client's deadline ends its wait, never the worker (only the service's --timeout stops a call)."""
    server, log = behaviours
    gate = tmp_path / "gate"
    before = len(calls_logged(log))
    restarts = metric(scrape(server.http), "mlcomponent_worker_restarts_total")
    error = server.error(do("gate", path=str(gate), tag="slow"), timeout=1.0)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gate.touch()
    assert server.infer(do("echo", tag="next"), timeout=20).outputs[0].name == "x"
    assert calls_logged(log)[before:] == ["gate slow", "echo next"]
    assert metric(scrape(server.http), "mlcomponent_worker_restarts_total") == restarts


def test_the_reserved_timeout_in_microseconds_is_deadline_exceeded_with_our_message(
        behaviours: tuple[GrpcServer, Path], tmp_path: Path) -> None:
    server, _ = behaviours
    gate = tmp_path / "gate"
    error = server.error(do("gate", path=str(gate), timeout=deadline_us(0.3)))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not finish within the request's deadline" in error.details()
    with mc.Client(f"grpc://{server.target}/{MODEL}") as client, pytest.raises(mc.DeadlineExceeded):
        client.infer({"x": [1]}, parameters={"do": "gate", "path": str(gate)}, timeout=0.3)
    gate.touch()  # the call runs to its end (result discarded); the next one waits its turn behind it
    assert server.infer(do("echo"), timeout=20).outputs[0].name == "x"


def test_a_full_queue_is_unavailable_with_retry_after(behaviours: tuple[GrpcServer, Path]) -> None:
    server, log = behaviours
    before = len(calls_logged(log))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(server.infer, do("sleep", seconds=1.5))
        while len(calls_logged(log)) == before:
            time.sleep(0.01)  # poll until the function is running
        second = pool.submit(server.infer, do("sleep", seconds=0.1))
        while metric(scrape(server.http), "mlcomponent_requests_queued") < 1:
            time.sleep(0.01)
        error = server.error(do("echo"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "already waiting (--max-queue 1)" in error.details()
        assert ("retry-after", "1") in error.trailing_metadata()
        with mc.Client(f"grpc://{server.target}/{MODEL}") as client, pytest.raises(mc.NotReadyError) as refused:
            client.infer({"x": [1]})
        assert refused.value.retry_after == 1
        assert first.result().outputs and second.result().outputs


def test_not_ready_is_unavailable_and_health_follows_readiness(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with serve_grpc(tmp_path, "gated_warmup.inference", env={"GATE_FILE": str(gate)}) as server:
        health = health_pb2_grpc.HealthStub(server.channel)
        check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert health.Check(check).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.stub.ServerReady(pb.ServerReadyRequest()).ready is False
        error = server.error(request(("x", "INT32", [1], [1])))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "is not ready" in error.details()
        gate.touch()
        wait_ready(server.http)
        assert health.Check(check).status == health_pb2.HealthCheckResponse.SERVING
        assert server.infer(request(("x", "INT32", [1], [1]))).outputs[0].name == "calls"


# --------------------------------------------------------------------------- auth, files, shutdown


def test_bearer_auth_guards_the_data_rpcs_and_leaves_health_open(tmp_path: Path) -> None:
    with serve_grpc(tmp_path, "echo.inference", "--auth-token-env", "MLC_TOKEN", env={"MLC_TOKEN": "s3cret"}) as server:
        stub = server.stub
        assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
        assert health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            for call, message in ((stub.ModelInfer, request(("x", "INT32", [1], [1]))),
                                  (stub.ModelMetadata, pb.ModelMetadataRequest(name=MODEL))):
                with pytest.raises(grpc.RpcError) as refused:
                    call(message, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", "Bearer s3cret"),)
        assert stub.ModelInfer(request(("x", "INT32", [1], [1]), outputs=["x"]), metadata=good).outputs[0].name == "x"
        with mc.Client(f"grpc://{server.target}/{MODEL}", token="s3cret") as client:
            assert client.infer({"x": [3]}, outputs=["x"])["x"].tolist() == [3]
        with mc.Client(f"grpc://{server.target}/{MODEL}") as client, pytest.raises(mc.UnauthorizedError):
            client.metadata()


def test_file_keys_in_and_out_over_grpc(tmp_path: Path) -> None:
    with serve_grpc(tmp_path, "files_echo.inference") as server:
        box = server.http.data_root / "boxes" / "users"
        (box / "users/alice").mkdir(parents=True)
        (box / "users/alice/notes.txt").write_bytes(b"hello over grpc")
        message = request(("doc", "FILE", [1], ["users/alice/notes.txt"]), outputs=["copy", "content_type"])
        message.outputs[0].parameters["datatype"].string_param = "FILE"
        message.outputs[0].parameters["content_type"].string_param = "text/plain"
        response = server.infer(message)
        copy = response.outputs[0]
        assert copy.datatype == "BYTES" and copy.parameters["datatype"].string_param == "FILE"
        key = raw_output(response, "copy")[0]
        assert (box / key).read_bytes() == b"hello over grpc"
        assert raw_output(response, "content_type") == ["text/plain"]  # guessed from the key's name
        downloaded = HTTP.get(server.http.url + copy.parameters["path"].string_param)
        assert downloaded.content == b"hello over grpc"
        with mc.Client(f"grpc://{server.target}/{MODEL}", http_url=server.http.url) as client:
            result = client.infer([{"name": "doc", "datatype": "FILE", "shape": [1], "data": ["users/alice/notes.txt"]}],
                                  outputs=[{"name": "copy", "parameters": {"datatype": "FILE"}}])
            target = client.download(result.files["copy"], tmp_path / "out/")
            assert target.read_bytes() == b"hello over grpc"
            with pytest.raises(mc.InferenceError):
                client.infer([{"name": "doc", "datatype": "FILE", "shape": [1], "data": ["users/alice/notes.txt"]}],
                             outputs=[{"name": "copy", "parameters": {"datatype": "FILE"}}], parameters={"mode": "raise"})


def not_stopping(server: GrpcServer) -> bool:
    try:
        return bool(server.stub.ServerReady(pb.ServerReadyRequest()).ready)
    except grpc.RpcError as error:  # the gRPC server itself has begun to stop
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        return False


def test_sigterm_drains_grpc_calls_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    with serve_grpc(tmp_path, "behaviours.inference", env={"CALL_LOG": str(log)}) as server:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(server.infer, do("sleep", seconds=1.5, tag="in-flight"))
            while not calls_logged(log):
                time.sleep(0.01)
            os.killpg(server.http.process.pid, signal.SIGTERM)
            while not_stopping(server):
                time.sleep(0.01)  # poll until the signal has been handled
            refused = server.error(do("echo", tag="late"))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert running.result().outputs[0].name == "x"
        assert server.http.process.wait(timeout=30) == 0
    assert calls_logged(log) == ["sleep in-flight"]


def test_several_http_workers_share_the_grpc_port(tmp_path: Path) -> None:
    with serve_grpc(tmp_path, "behaviours.inference", "--workers", "2", wait_path="/v2/health/ready") as server:
        pids = {raw_output(server.infer(request(("x", "INT32", [1], [1]), outputs=["pid"])), "pid")[0]}
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            # a new connection (grpc shares them between channels unless told not to) may land on either worker
            with grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
                answer = GRPCInferenceServiceStub(fresh).ModelInfer(request(("x", "INT32", [1], [1]), outputs=["pid"]))
                pids.add(raw_output(answer, "pid")[0])
        assert len(pids) == 2, "gRPC calls never reached a second worker"
    assert "cannot serve gRPC" not in server.http.output()
