"""The request-file lifecycle lives in the data plane, so both transports share it: a request
that fails after one of its FILE outputs was published keeps nothing in the file box."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from open_inference.grpc import protocol as pb

from tests.support import HTTP
from tests.test_grpc import GrpcServer, request, serve_grpc

NOTES = "users/alice/notes.txt"


@pytest.fixture
def server(tmp_path: Path) -> GrpcServer:  # type: ignore[misc]
    with serve_grpc(tmp_path, "files_echo.inference") as served:
        (served.http.data_root / "boxes" / "users" / "users" / "alice").mkdir(parents=True)
        (box(served) / NOTES).write_bytes(b"hello")
        yield served


def box(server: GrpcServer) -> Path:
    return server.http.data_root / "boxes" / "users"


def stored(server: GrpcServer) -> list[str]:
    return sorted(str(p.relative_to(box(server))) for p in box(server).rglob("*") if p.is_file())


def test_a_failed_grpc_request_leaves_no_outputs_in_the_box(server: GrpcServer) -> None:
    def message(mode: str) -> pb.ModelInferRequest:
        sent = request(("doc", "FILE", [1], [NOTES]), outputs=["copy", "second"], mode=mode)
        for output in sent.outputs:
            output.parameters["datatype"].string_param = "FILE"
        return sent

    assert len(server.infer(message("normal")).outputs) == 2
    assert len(stored(server)) == 3  # the input and both outputs of a request that succeeded
    before = stored(server)
    with pytest.raises(grpc.RpcError) as failed:
        server.infer(message("escape_second"))  # `copy` is published, then `second` is refused
    assert failed.value.code() == grpc.StatusCode.INTERNAL and "second" in failed.value.details()
    assert stored(server) == before


def test_a_failed_rest_request_leaves_no_outputs_in_the_box(server: GrpcServer) -> None:
    before = stored(server)
    body = {"inputs": [{"name": "doc", "datatype": "FILE", "shape": [1], "data": [NOTES]}],
            "outputs": [{"name": "copy", "parameters": {"datatype": "FILE"}},
                        {"name": "second", "parameters": {"datatype": "FILE"}}],
            "parameters": {"mode": "escape_second"}}
    failed = HTTP.post(server.http.url + "/v2/models/test-model/infer", json=body, timeout=60)
    assert failed.status_code == 500 and "second" in failed.json()["error"]
    assert stored(server) == before
