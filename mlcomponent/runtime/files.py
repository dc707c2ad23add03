"""One request's files: a private folder under inferenceFilesPath, inputs in, outputs out.

Life cycle: FILE inputs are copied from the file box (or written by the multipart
reader) into the folder; FILE outputs get fresh paths there; what the function
wrote is uploaded to the file box under a collision-free key; the folder is
removed before the answer, whatever happened, and a failed request's uploads and
outputs are removed from the box too (``discard``).

Output keys are signed (``FileKeys``): the download route serves only keys that this
service minted, and the box keeps them for ``--keep-files`` (``runtime/retention.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import mimetypes
import os
import posixpath
import shutil
import uuid
from pathlib import Path

from mlcomponent.boxes.base import Box, check_key
from mlcomponent.errors import BadFunctionOutput, BadRequest
from mlcomponent.protocol.types import InferenceRequest, InputTensor, OutputTensor, StagedFile

KEY_ROOT = "mlcomponent"
MAX_NAME_BYTES = 120


def extension_for(content_type: str | None) -> str:
    if not content_type:
        return ".bin"
    base = content_type.split(";")[0].strip().lower()
    return {"text/csv": ".csv", "image/jpeg": ".jpg", "text/plain": ".txt"}.get(base) or (
        mimetypes.guess_extension(base) or ".bin")


def safe_filename(name: str | None, fallback: str) -> str:
    """A client-supplied file name reduced to one harmless path segment (at most 120 bytes in UTF-8:
    120 CJK characters are 360 bytes, past the 255 a file system allows)."""
    base = posixpath.basename((name or "").replace("\\", "/")).strip()
    cleaned = "".join(c for c in base if c.isalnum() or c in "-_.").lstrip(".")
    cleaned = cleaned.encode()[:MAX_NAME_BYTES].decode(errors="ignore")
    return cleaned or fallback


class FileKeys:
    """Output keys signed with the service's secret, so downloads serve only what this service wrote.

    ``mlcomponent/<model>/outputs/<request id>-<signature>/<file name>``: the signature is
    an HMAC of the folder, so checking a key needs no state and no I/O, works in every
    worker and replica that shares the secret, and cannot be forged by someone who can
    only write to the box.
    """

    def __init__(self, model_name: str, secret: bytes) -> None:
        self.model_name = model_name
        self._secret = secret

    def _signature(self, request_id: str) -> str:
        message = f"{self.model_name}/outputs/{request_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def output_folder(self, request_id: str) -> str:
        return f"{KEY_ROOT}/{self.model_name}/outputs/{request_id}-{self._signature(request_id)}"

    def servable(self, key: str) -> bool:
        """True for a key this service minted: its own model, an output, a valid signature."""
        parts = key.split("/")
        if len(parts) != 5 or parts[:3] != [KEY_ROOT, self.model_name, "outputs"] or not parts[4]:
            return False
        request_id, _, signature = parts[3].rpartition("-")
        return bool(request_id) and hmac.compare_digest(signature, self._signature(request_id))


OWNER_FILE = ".owner"  # in each request folder; locked (flock) while a live process uses the folder


def hold_folder(folder: Path) -> int | None:
    """Lock the folder's owner file for as long as this process holds the returned descriptor.

    A sweeper (another service sharing ``inferenceFilesPath``, or this one's start-up
    sweep) removes only folders nobody holds: the kernel drops the lock when its process
    dies, so a killed process's folders are fair game and a live one's never are.
    """
    try:
        descriptor = os.open(folder / OWNER_FILE, os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return None
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def is_held(folder: Path) -> bool:
    """Whether a live process holds ``folder`` (see ``hold_folder``)."""
    try:
        descriptor = os.open(folder / OWNER_FILE, os.O_RDONLY)
    except OSError:
        return False  # no owner file: an old or half-made folder, nobody's
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # closing releases a lock we got
    return False


class RequestFiles:
    """The files of one request. Staging returns where each file is; nothing is changed in place."""

    def __init__(self, root: Path, box: Box, model_name: str, *, keep_uploads: bool = True,
                 keys: FileKeys | None = None) -> None:
        self.root = root
        self._id: str | None = None
        self.box = box
        self.model_name = model_name
        self.uploaded: dict[str, tuple[Path, str | None]] = {}  # multipart parts: input name -> (path, type)
        self.bytes_in = 0
        self.bytes_out = 0
        self.keep_uploads = keep_uploads
        self.keys = keys
        self.upload_keys: dict[str, str] = {}
        self.published: list[str] = []  # output keys written to the box
        self._owner: int | None = None  # the lock that tells sweepers this folder is in use
        self._created = False

    @property
    def id(self) -> str:
        """Made on first use: most requests carry no files and never need one."""
        if self._id is None:
            self._id = uuid.uuid4().hex
        return self._id

    @property
    def folder(self) -> Path:
        return self.root / self.id

    def ensure_folder(self) -> Path:
        if not self._created:
            self.folder.mkdir(parents=True, exist_ok=False)
            self._owner = hold_folder(self.folder)
            self._created = True
        return self.folder

    def upload_target(self, input_name: str, filename: str | None) -> Path:
        """Where the multipart reader writes the file part for ``input_name``."""
        if input_name in self.uploaded:
            raise BadRequest(f"multipart: more than one file part for input {input_name!r}")
        folder = self.ensure_folder() / "in" / safe_filename(input_name, "input")
        folder.mkdir(parents=True, exist_ok=True)
        return folder / safe_filename(filename, "upload")

    def key_prefix(self, kind: str) -> str:
        return f"{KEY_ROOT}/{self.model_name}/{kind}/{self.id}"

    def stage_inputs(self, request: InferenceRequest) -> dict[str, StagedFile]:
        """Give each FILE input a local path: its uploaded part, or a copy of its key."""
        return {item.name: self._stage_input(item) for item in request.inputs if item.datatype == "FILE"}

    def _stage_input(self, item: InputTensor) -> StagedFile:
        name = item.name
        if name in self.uploaded:
            path, part_type = self.uploaded[name]
            content_type = item.content_type or part_type
            if self.keep_uploads:
                key = f"{self.key_prefix('uploads')}/{safe_filename(name, 'input')}/{path.name}"
                self.box.store(path, key, content_type)
                self.upload_keys[name] = key
            return StagedFile(str(path), content_type)
        if item.data is None:
            raise BadRequest(f"input {name!r}: FILE data is missing; give a key in the file box, "
                             "or send the file as a multipart part named after the input")
        key = check_key(item.data, f"input {name!r}: key")
        folder = self.ensure_folder() / "in" / safe_filename(name, "input")
        folder.mkdir(parents=True, exist_ok=True)
        destination = folder / safe_filename(posixpath.basename(key), "input")
        self.bytes_in += self.box.fetch(key, destination)
        return StagedFile(str(destination), item.content_type)

    def stage_outputs(self, request: InferenceRequest) -> dict[str, StagedFile]:
        """A fresh path in the request folder for each FILE output the function is to write."""
        staged = {}
        for item in request.outputs:
            if item.datatype == "FILE":
                folder = self.ensure_folder() / "out"
                folder.mkdir(exist_ok=True)
                path = folder / (safe_filename(item.name, "output") + extension_for(item.content_type))
                staged[item.name] = StagedFile(str(path), item.content_type)
        return staged

    def publish(self, outputs: list[OutputTensor]) -> None:
        """Upload each FILE output the function wrote; its data becomes ``[key]``."""
        for item in outputs:
            if item.datatype != "FILE":
                continue
            path = self._confined(item.data, item.name)
            suffix = path.suffix or extension_for(item.content_type)
            folder = self.keys.output_folder(self.id) if self.keys else self.key_prefix("outputs")
            key = f"{folder}/{safe_filename(item.name, 'output')}{suffix}"
            content_type = item.content_type or mimetypes.guess_type(path.name)[0]
            self.published.append(key)
            self.bytes_out += self.box.store(path, key, content_type)
            item.data = [key]
            item.content_type = content_type

    def _confined(self, returned: str, name: str) -> Path:
        if not self._created:
            raise BadFunctionOutput(f"inference output {name!r} is a FILE at {returned!r}, but the request "
                                    "folder was never created; write to the path given in output_fields")
        folder = self.folder.resolve()
        path = Path(returned)
        path = (path if path.is_absolute() else folder / path).resolve()
        if folder not in path.parents:
            raise BadFunctionOutput(f"inference output {name!r}: {returned!r} is outside the request folder; "
                                    "write FILE outputs to the path given in output_fields")
        if not path.is_file():
            raise BadFunctionOutput(f"inference output {name!r}: no file was written at {returned!r}")
        return path

    def cleanup(self) -> None:
        if self._created:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self._owner is not None:
                os.close(self._owner)
                self._owner = None

    @property
    def in_box(self) -> bool:
        """Whether this request put anything in the file box (kept uploads, outputs)."""
        return bool(self.upload_keys or self.published)

    def discard(self) -> None:
        """A failed request keeps nothing: remove its kept uploads and any outputs already stored."""
        for key in [*self.upload_keys.values(), *self.published]:
            try:
                self.box.delete(key)
            except Exception:  # noqa: BLE001 - best effort; retention removes what is left
                continue
        self.upload_keys.clear()
        self.published.clear()
