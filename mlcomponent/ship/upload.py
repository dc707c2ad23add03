"""`mlcomponent upload`: the model into its box, where ``modelBox``/``subPath``/``modelPath`` say.

One file becomes ``modelPath`` itself; a folder or several files go under ``modelPath``
as a folder. The box is what ``--boxes`` says (the file ``serve`` reads: S3 or a local
folder), or S3 at the operator configuration's ``s3Endpoint`` with credentials from the
environment. After each file, its size and ETag (or, for a folder box, its SHA-256) are
compared with what was sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mlcomponent.boxes.config import BoxSettings
from mlcomponent.manifest import Manifest

CHUNK = 8 * 1024 * 1024  # multipart part size, and the threshold above which uploads are multipart
Progress = Callable[[int], None]


class UploadError(ValueError):
    """One line: which box, what went wrong, what to change."""


@dataclass(frozen=True)
class Item:
    source: Path
    key: str  # in the box (bucket), subPath included


def _walk(path: Path) -> Iterator[tuple[Path, PurePosixPath]]:
    if path.is_dir():
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            yield found, PurePosixPath(path.name) / found.relative_to(path).as_posix()
    else:
        yield path, PurePosixPath(path.name)


def items(manifest: Manifest, files: list[Path]) -> list[Item]:
    model = manifest.inference.model
    box = manifest.box(model.model_box)
    if box.mount_s3_box is None or box.path is None:
        raise UploadError(f"spec.connectedBoxes: the model box {model.model_box!r} is not a mountS3Box with a path; "
                          "the model is uploaded to the box that modelBox names")
    for path in files:
        if not path.exists():
            raise UploadError(f"{path}: no such file or folder")
    relative = PurePosixPath(model.model_path).relative_to(box.path)
    prefix = PurePosixPath(box.mount_s3_box.sub_path.strip("/") or ".") / relative
    if len(files) == 1 and files[0].is_file():
        return [Item(files[0], str(prefix))]
    return [Item(source, str(prefix / name)) for path in files for source, name in _walk(path)]


def expected_etag(path: Path, chunk: int = CHUNK) -> str:
    """S3's ETag of an upload made with parts of ``chunk`` bytes: an MD5, or the MD5 of the parts' MD5s."""
    whole = hashlib.md5(usedforsecurity=False)
    parts = []
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            whole.update(block)
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    if path.stat().st_size < chunk:  # below the threshold: one PUT
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Target:
    """Where the box lives: an S3 bucket (with how to reach it) or a local folder."""

    box: str
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    prefix: str = ""
    folder: Path | None = None

    def describe(self) -> str:
        return f"folder {self.folder}" if self.folder else f"S3 bucket {self.bucket!r}"


def target_from_boxes(box: str, settings: BoxSettings, data_root: Path, environ: Mapping[str, str]) -> Target:
    """The box as ``serve --boxes`` sees it."""
    if settings.s3 is None:
        return Target(box, folder=Path(settings.folder) if settings.folder else data_root / "boxes" / box)
    s3 = settings.s3

    def secret(name: str | None) -> str | None:
        if name is None:
            return None
        if name not in environ:
            raise UploadError(f"box {box!r}: environment variable {name!r} (named in --boxes) is not set; "
                              "export it with the box's credentials")
        return environ[name]

    return Target(box, bucket=s3.bucket or box, endpoint=s3.endpoint or environ.get("AWS_ENDPOINT_URL"),
                  region=s3.region, access_key=secret(s3.access_key_env), secret_key=secret(s3.secret_key_env),
                  prefix=s3.prefix.strip("/"))


def _s3_error(target: Target, error: Exception) -> UploadError:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, S3UploadFailedError) and isinstance(error.__cause__ or error.__context__, Exception):
        error = error.__cause__ or error.__context__  # boto3 wraps S3's answer
    where = f"box {target.box!r} ({target.describe()})"
    if isinstance(error, EndpointConnectionError):
        return UploadError(f"{where}: cannot reach S3 at {target.endpoint or 'AWS'}; check the endpoint in --boxes "
                           "(or the operator configuration's s3Endpoint) and that the box's S3 is up")
    if isinstance(error, NoCredentialsError):
        return UploadError(f"{where}: no credentials; set accessKeyEnv/secretKeyEnv in --boxes, or "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"):
            return UploadError(f"{where}: the credentials were refused ({code}); check the access key and secret key "
                               "(as user `developer` of that box)")
        if code in ("NoSuchBucket", "404"):
            return UploadError(f"{where}: there is no such bucket; check s3BoxName in the manifest and the bucket "
                               "in --boxes")
        return UploadError(f"{where}: S3 refused the upload ({code}: {error.response.get('Error', {}).get('Message')})")
    return UploadError(f"{where}: {' '.join(str(error).split())}")


def _client(target: Target) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=target.endpoint, region_name=target.region, aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                      s3={"addressing_style": "path"}))


def upload(target: Target, item: Item, progress: Progress) -> str:
    """Put one file; returns what was checked ("ETag ..." or "sha256 ..."); raises UploadError."""
    size = item.source.stat().st_size
    if target.folder is not None:
        destination = target.folder / item.key
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        with item.source.open("rb") as source, partial.open("wb") as sink:
            while block := source.read(CHUNK):
                sink.write(block)
                progress(len(block))
        partial.replace(destination)
        digest = sha256(item.source)
        if destination.stat().st_size != size or sha256(destination) != digest:
            raise UploadError(f"box {target.box!r}: {destination} does not match {item.source} after the copy")
        return f"sha256 {digest[:12]}"
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    key = f"{target.prefix}/{item.key}" if target.prefix else item.key
    client = _client(target)
    config = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK)
    try:
        client.upload_file(str(item.source), target.bucket, key, Config=config, Callback=progress)
        head = client.head_object(Bucket=target.bucket, Key=key)
    except (BotoCoreError, ClientError, S3UploadFailedError) as error:
        raise _s3_error(target, error) from None
    etag, stored = str(head.get("ETag", "")).strip('"'), int(head["ContentLength"])
    wanted = expected_etag(item.source)
    if stored != size or etag != wanted:
        raise UploadError(f"box {target.box!r}: {key} holds {stored} bytes with ETag {etag}, but {item.source} has "
                          f"{size} bytes and ETag {wanted}; upload it again")
    return f"ETag {etag}"

