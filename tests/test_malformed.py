"""The malformed-request corpus: every client mistake is a 4xx with a message, never a 5xx,
and no message shows a server path. One real service (a FILE-capable function without a
docstring spec, so every decoding path is reached), one row per request.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import HTTP, ROOT, Server, serve, write_manifest

MODEL = "test-model"
INFER = f"/v2/models/{MODEL}/infer"
BINARY = "inference-header-content-length"


def j(value: Any) -> bytes:
    return json.dumps(value).encode().replace(json.dumps(DEEP).encode(), NESTED)


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0], **fields}


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return j({"inputs": list(inputs), **extra})


def doc(key: Any, **fields: Any) -> dict[str, Any]:
    return {"name": "doc", "datatype": "FILE", "shape": [1], "data": key, **fields}


def binary(header: Any, tail: bytes = b"", length: str | bytes | None = None) -> tuple[dict[str, Any], bytes]:
    raw = header if isinstance(header, bytes) else j(header)
    return {BINARY: length if length is not None else str(len(raw))}, raw + tail


BOUNDARY = "corpus-boundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(*parts: tuple[str, bytes | str, str | None], close: bool = True) -> bytes:
    """Parts as (content-disposition, content, content-type)."""
    chunks = []
    for disposition, content, kind in parts:
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if kind:
            head += f"Content-Type: {kind}\r\n"
        chunks.append(head.encode() + b"\r\n" + (content.encode() if isinstance(content, str) else content) + b"\r\n")
    return b"".join(chunks) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def file_part(name: str = "doc", content: bytes = b"hello", filename: str = "a.txt") -> tuple[str, bytes, str]:
    return f'form-data; name="{name}"; filename="{filename}"', content, "text/plain"


def request_part(value: Any) -> tuple[str, bytes, None]:
    return 'form-data; name="request"', value if isinstance(value, bytes) else j(value), None


LONG_KEY = "k" * 10_000
DEEP = "<nested 1,000 deep>"  # j() writes [[[...]]] 1,000 deep here: orjson parses it (its limit is 1,024),
NESTED = b"[" * 1000 + b"]" * 1000  # and repr() or str() of it recurses past Python's limit
LONG_VALUE = "v" * 1_000_000  # a value echoed in a message must come back cut short
NOTE = doc("inbox/note.txt")  # exists: the output requests are the only fault
Row = tuple[str, str, dict[str, Any], bytes]  # method, path, headers, body
CORPUS: dict[str, Row] = {
    # ------------------------------------------------------------------ the JSON body
    "not json": ("POST", INFER, {}, b"{not json"),
    "empty body": ("POST", INFER, {}, b""),
    "blank body": ("POST", INFER, {}, b"  \n "),
    "null body": ("POST", INFER, {}, b"null"),
    "array body": ("POST", INFER, {}, b"[]"),
    "string body": ("POST", INFER, {}, b'"inputs"'),
    "number body": ("POST", INFER, {}, b"5"),
    "nan literal": ("POST", INFER, {}, b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}'),
    "1e400": ("POST", INFER, {}, b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1e400]}]}'),
    "nested 100k deep": ("POST", INFER, {}, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "invalid utf-8": ("POST", INFER, {}, b'{"inputs": [], "id": "\xff\xfe"}'),
    "inputs missing": ("POST", INFER, {}, j({"id": "x"})),
    "inputs null": ("POST", INFER, {}, j({"inputs": None})),
    "inputs a number": ("POST", INFER, {}, j({"inputs": 5})),
    "inputs an object": ("POST", INFER, {}, j({"inputs": {"x": 1}})),
    "input a number": ("POST", INFER, {}, j({"inputs": [5]})),
    "input null": ("POST", INFER, {}, j({"inputs": [None]})),
    "input a list": ("POST", INFER, {}, j({"inputs": [[1, 2]]})),
    "name missing": ("POST", INFER, {}, body({"datatype": "FP32", "shape": [1], "data": [1]})),
    "name empty": ("POST", INFER, {}, body(tensor(name=""))),
    "name a number": ("POST", INFER, {}, body(tensor(name=5))),
    "name a list": ("POST", INFER, {}, body(tensor(name=["x"]))),
    "name an object": ("POST", INFER, {}, body(tensor(name={"x": 1}))),
    "datatype missing": ("POST", INFER, {}, body({"name": "x", "shape": [1], "data": [1]})),
    "datatype unknown": ("POST", INFER, {}, body(tensor(datatype="FP16"))),
    "datatype a number": ("POST", INFER, {}, body(tensor(datatype=5))),
    "datatype a list": ("POST", INFER, {}, body(tensor(datatype=["FP32"]))),
    "shape missing": ("POST", INFER, {}, body({"name": "x", "datatype": "FP32", "data": [1]})),
    "shape a string": ("POST", INFER, {}, body(tensor(shape="1"))),
    "shape negative": ("POST", INFER, {}, body(tensor(shape=[-1]))),
    "shape a float": ("POST", INFER, {}, body(tensor(shape=[1.5]))),
    "shape a boolean": ("POST", INFER, {}, body(tensor(shape=[True]))),
    "shape nested": ("POST", INFER, {}, body(tensor(shape=[[1]]))),
    "shape huge": ("POST", INFER, {}, body(tensor(shape=[2**40, 2**40]))),
    "data missing": ("POST", INFER, {}, body({"name": "x", "datatype": "FP32", "shape": [1]})),
    "data null": ("POST", INFER, {}, body(tensor(data=None))),
    "data too short": ("POST", INFER, {}, body(tensor(shape=[2, 2], data=[1, 2, 3]))),
    "data ragged": ("POST", INFER, {}, body(tensor(shape=[3], data=[[1], [2, 3]]) | {"shape": [2, 2]})),
    "data holds objects": ("POST", INFER, {}, body(tensor(data=[{"a": 1}]))),
    "data holds booleans": ("POST", INFER, {}, body(tensor(data=[True]))),
    "data a string for FP32": ("POST", INFER, {}, body(tensor(data=["a"]))),
    "INT32 overflow": ("POST", INFER, {}, body(tensor(datatype="INT32", data=[2**31]))),
    "INT32 float": ("POST", INFER, {}, body(tensor(datatype="INT32", data=[1.5]))),
    "FP32 overflow": ("POST", INFER, {}, body(tensor(data=[1e39]))),
    "str holds a number": ("POST", INFER, {}, body(tensor(datatype="str", data=[3]))),
    "input twice": ("POST", INFER, {}, body(tensor(), tensor())),
    "input parameters a list": ("POST", INFER, {}, body(tensor(parameters=[1]))),
    "parameters a number": ("POST", INFER, {}, j({"inputs": [], "parameters": 5})),
    "parameters a list": ("POST", INFER, {}, j({"inputs": [], "parameters": [1]})),
    "parameter a list": ("POST", INFER, {}, j({"inputs": [], "parameters": {"p": [1, 2]}})),
    "parameter an object": ("POST", INFER, {}, j({"inputs": [], "parameters": {"p": {"a": 1}}})),
    "timeout negative": ("POST", INFER, {}, j({"inputs": [], "parameters": {"timeout": -1}})),
    "timeout a string": ("POST", INFER, {}, j({"inputs": [], "parameters": {"timeout": "soon"}})),
    "timeout a boolean": ("POST", INFER, {}, j({"inputs": [], "parameters": {"timeout": True}})),
    "outputs a number": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": 5})),
    "outputs an object": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": {"name": "y"}})),
    "output a number": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [5]})),
    "output without a name": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [{}]})),
    "output name a number": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [{"name": 5}]})),
    "output name empty": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [{"name": ""}]})),
    "output name empty, FILE": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "", "parameters": {"datatype": "FILE"}}]})),
    "output parameters a number": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [{"name": "y", "parameters": 5}]})),
    "output datatype a number": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"datatype": 5}}]})),
    "output datatype unknown": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"datatype": "FP16"}}]})),
    "output content_type a number": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"datatype": "FILE", "content_type": 5}}]})),
    "output content_type an object": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"datatype": "FILE", "content_type": {"a": 1}}}]})),
    "output shape a string": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"shape": "big"}}]})),
    "id nested 1,000 deep": ("POST", INFER, {}, j({"inputs": [], "id": DEEP})),
    "shape nested 1,000 deep": ("POST", INFER, {}, body(tensor(shape=DEEP))),
    "datatype nested 1,000 deep": ("POST", INFER, {}, body(tensor(datatype=DEEP))),
    "name nested 1,000 deep": ("POST", INFER, {}, body(tensor(name=DEEP))),
    "data nested 1,000 deep": ("POST", INFER, {}, body(tensor(data=DEEP))),
    "timeout nested 1,000 deep": ("POST", INFER, {}, j({"inputs": [], "parameters": {"timeout": DEEP}})),
    "parameter nested 1,000 deep": ("POST", INFER, {}, j({"inputs": [], "parameters": {"p": DEEP}})),
    "output shape nested 1,000 deep": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"shape": DEEP}}]})),
    "output content_type nested 1,000 deep": ("POST", INFER, {}, j({"inputs": [NOTE], "outputs": [
        {"name": "y", "parameters": {"datatype": "FILE", "content_type": DEEP}}]})),
    "datatype of a million characters": ("POST", INFER, {}, body(tensor(datatype=LONG_VALUE))),
    "element of a million characters": ("POST", INFER, {}, body(tensor(data=[LONG_VALUE]))),
    "timeout of a million characters": ("POST", INFER, {}, j({"inputs": [], "parameters": {"timeout": LONG_VALUE}})),
    # ------------------------------------------------------------------ FILE inputs
    "FILE data nested 1,000 deep": ("POST", INFER, {}, body(doc(DEEP))),
    "FILE data of a million characters": ("POST", INFER, {}, body(doc([LONG_VALUE, "b"]))),
    "key a number": ("POST", INFER, {}, body(doc(5))),
    "key a list of two": ("POST", INFER, {}, body(doc(["a", "b"]))),
    "key an object": ("POST", INFER, {}, body(doc({"key": "a"}))),
    "key empty": ("POST", INFER, {}, body(doc(""))),
    "key missing": ("POST", INFER, {}, body({"name": "doc", "datatype": "FILE", "shape": [1]})),
    "key with ..": ("POST", INFER, {}, body(doc("../secrets.txt"))),
    "key absolute": ("POST", INFER, {}, body(doc("/etc/passwd"))),
    "key with //": ("POST", INFER, {}, body(doc("a//b"))),
    "key with a backslash": ("POST", INFER, {}, body(doc("a\\b"))),
    "key with a NUL": ("POST", INFER, {}, body(doc("a\x00b"))),
    "key of 10,000 characters": ("POST", INFER, {}, body(doc(LONG_KEY))),
    "key segment of 300 characters": ("POST", INFER, {}, body(doc("a/" + "s" * 300))),
    "key that does not exist": ("POST", INFER, {}, body(doc("no/such/object.txt"))),
    "key a folder": ("POST", INFER, {}, body(doc("mlcomponent"))),
    "FILE content_type a number": ("POST", INFER, {}, body(doc("no/such.txt", content_type=5))),
    "FILE shape a string": ("POST", INFER, {}, body(doc("a.txt", shape="1"))),
    # ------------------------------------------------------------------ binary tensors
    "binary length superscript two": ("POST", INFER, *binary({"inputs": []}, length=b"\xb2")),  # '²' in latin-1
    "binary length negative": ("POST", INFER, *binary({"inputs": []}, length="-1")),
    "binary length text": ("POST", INFER, *binary({"inputs": []}, length="abc")),
    "binary length past the body": ("POST", INFER, *binary({"inputs": []}, length="999")),
    "binary length zero": ("POST", INFER, *binary({"inputs": []}, length="0")),
    "binary header inputs a number": ("POST", INFER, *binary({"inputs": 5})),
    "binary header a list": ("POST", INFER, *binary([1, 2])),
    "binary header null": ("POST", INFER, *binary(None)),
    "binary header not json": ("POST", INFER, *binary(b"{nope")),
    "binary size negative": ("POST", INFER, *binary({"inputs": [tensor(parameters={"binary_data_size": -4})]})),
    "binary size a string": ("POST", INFER, *binary({"inputs": [tensor(parameters={"binary_data_size": "4"})]},
                                                   b"\0" * 4)),
    "binary size past the end": ("POST", INFER, *binary({"inputs": [tensor(parameters={"binary_data_size": 8})]},
                                                       b"\0" * 4)),
    "binary bytes left over": ("POST", INFER, *binary({"inputs": [tensor(parameters={"binary_data_size": 4})]},
                                                     b"\0" * 6)),
    "binary not whole elements": ("POST", INFER, *binary({"inputs": [tensor(parameters={"binary_data_size": 3})]},
                                                        b"\0" * 3)),
    "binary FILE": ("POST", INFER, *binary({"inputs": [doc(None, parameters={"binary_data_size": 2})]}, b"ab")),
    "binary BYTES truncated": ("POST", INFER, *binary({"inputs": [
        tensor(datatype="BYTES", parameters={"binary_data_size": 6})]}, b"\x09\0\0\0ab")),
    "binary BYTES not utf-8": ("POST", INFER, *binary({"inputs": [
        tensor(datatype="BYTES", parameters={"binary_data_size": 6})]}, b"\x02\0\0\0\xff\xfe")),
    "binary length of 5,000 digits": ("POST", INFER, *binary({"inputs": []}, length="9" * 5000)),
    "binary size nested 1,000 deep": ("POST", INFER, *binary({"inputs": [tensor(parameters={"binary_data_size": DEEP})]})),
    # ------------------------------------------------------------------ multipart
    "multipart boundary of 300 bytes": ("POST", INFER, {"content-type": f"multipart/form-data; boundary={'b' * 300}"},
                                        b"--" + b"b" * 300 + b"--\r\n"),
    "multipart part named with 120 CJK characters": ("POST", INFER, MULTIPART, multipart(
        file_part(name="\u6587" * 120, filename="\u6587" * 120 + ".txt"), request_part({"inputs": [
            {"name": "\u6587" * 120, "datatype": "FP32", "shape": [1], "data": [1]}]}))),
    "multipart FILE input nested 1,000 deep": ("POST", INFER, MULTIPART, multipart(
        request_part({"inputs": [{"name": "doc", "datatype": DEEP}]}), file_part())),
    "multipart without a boundary": ("POST", INFER, {"content-type": "multipart/form-data"}, b"--x--\r\n"),
    "multipart truncated": ("POST", INFER, MULTIPART, multipart(file_part(), close=False)),
    "multipart cut in a part": ("POST", INFER, MULTIPART, multipart(file_part())[:-40]),
    "multipart empty": ("POST", INFER, MULTIPART, b""),
    "multipart garbage": ("POST", INFER, MULTIPART, b"this is not multipart at all"),
    "multipart part without a name": ("POST", INFER, MULTIPART, multipart(('form-data; filename="a.txt"', b"x", None))),
    "multipart request not json": ("POST", INFER, MULTIPART, multipart(request_part(b"{nope"), file_part())),
    "multipart request a list": ("POST", INFER, MULTIPART, multipart(request_part([1]), file_part())),
    "multipart request inputs a number": ("POST", INFER, MULTIPART, multipart(request_part({"inputs": 5}), file_part())),
    "multipart input named with a list": ("POST", INFER, MULTIPART, multipart(
        request_part({"inputs": [{"name": ["doc"], "datatype": "FILE"}]}), file_part())),
    "multipart input named with an object": ("POST", INFER, MULTIPART, multipart(
        request_part({"inputs": [{"name": {"a": 1}, "datatype": "FILE"}]}), file_part())),
    "multipart file for a number input": ("POST", INFER, MULTIPART, multipart(
        request_part({"inputs": [{"name": "doc", "datatype": "FP32", "shape": [1], "data": [1]}]}), file_part())),
    "multipart two files for one input": ("POST", INFER, MULTIPART, multipart(file_part(), file_part())),
    "multipart 65 file parts": ("POST", INFER, MULTIPART, multipart(*(file_part(f"f{i}") for i in range(65)))),
    # ------------------------------------------------------------------ routes, methods, downloads
    "GET on infer": ("GET", INFER, {}, b""),
    "PUT on infer": ("PUT", INFER, {}, b"{}"),
    "unknown model": ("POST", "/v2/models/other/infer", {}, body()),
    "unknown route": ("POST", f"/v2/models/{MODEL}/versions/1/extra/infer", {}, body()),
    "download with ..": ("GET", f"/v2/models/{MODEL}/files/mlcomponent/{MODEL}/%2E%2E/x", {}, b""),
    "download a long key": ("GET", f"/v2/models/{MODEL}/files/{LONG_KEY}", {}, b""),
    "download an unsigned key": ("GET", f"/v2/models/{MODEL}/files/mlcomponent/{MODEL}/outputs/abc/x.txt", {}, b""),
    "download a forged key": ("GET", f"/v2/models/{MODEL}/files/mlcomponent/{MODEL}/outputs/{'0' * 32}-{'f' * 32}/x",
                              {}, b""),
    "download an upload": ("GET", f"/v2/models/{MODEL}/files/mlcomponent/{MODEL}/uploads/abc/doc/a.txt", {}, b""),
    "download another model's key": ("GET", f"/v2/models/{MODEL}/files/mlcomponent/other/outputs/a/x", {}, b""),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("malformed-corpus")
    inbox = folder / "data" / "boxes" / "users" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "note.txt").write_text("a note")
    with serve(write_manifest(folder, "files_echo.inference"), data_root=folder / "data") as running:
        yield running


def server_paths(server: Server) -> list[str]:
    return [str(server.data_root), str(ROOT), str(Path(server.data_root).resolve()), "/tmp/", "/work/", "/home/"]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client(timeout=60) as shared:
        yield shared


@pytest.mark.parametrize("row", list(CORPUS), ids=list(CORPUS))
def test_every_malformed_request_is_a_4xx_that_names_no_server_path(server: Server, client: httpx.Client,
                                                                     row: str) -> None:
    method, path, headers, content = CORPUS[row]
    response = client.request(method, path, headers=headers, content=content)
    assert 400 <= response.status_code < 500, f"{row}: {response.status_code} {response.text[:500]}"
    message = response.json()["error"]
    assert isinstance(message, str) and message, row
    assert len(message) < 2_500, f"{row}: a message of {len(message)} characters echoes too much: {message[:300]}"
    for where in server_paths(server):
        assert where not in response.text, f"{row}: the message shows {where!r}: {message[:300]}"


def test_a_request_line_the_parser_refuses_is_a_400(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/test-model/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


def test_the_corpus_left_the_service_ready_with_no_request_folders_and_no_uploads(server: Server) -> None:
    """Runs after the corpus (module order): still ready, and every refused request cleaned up after itself."""
    assert HTTP.get(server.url + "/v2/health/ready").status_code == 200
    files_root = server.data_root / "files" / "nonexistent" / "mlc" / "tmp"
    assert not files_root.exists() or list(files_root.iterdir()) == []
    kept = server.data_root / "boxes" / "users" / "mlcomponent"
    assert not kept.exists() or [p for p in kept.rglob("*") if p.is_file()] == []
