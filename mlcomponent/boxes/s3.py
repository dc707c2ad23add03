"""A box that is an S3 bucket. The only module that imports boto3.

Transfers stream through boto3's managed transfer (multipart, bounded memory), and
an upload only becomes visible when complete, so readers never see half a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from mlcomponent.boxes.base import CHUNK, ObjectInfo, check_key
from mlcomponent.errors import BoxFailed, BoxUnavailable, MLComponentError, NotFound, shown

TRANSFER = TransferConfig(multipart_threshold=8 * CHUNK, multipart_chunksize=8 * CHUNK,
                          max_concurrency=2, io_chunksize=256 * 1024, max_io_queue=16)


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _trouble(box: str, doing: str, key: str, error: Exception) -> MLComponentError:
    """S3 trouble as 503 (unreachable, or S3's own 5xx: retry) or 502 (refused), naming the box's
    manifest name and S3's error code, never the endpoint, bucket or credentials (those go to the log)."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, (ClientError, BotoCoreError)):
        cause = cause.__cause__ or cause.__context__  # boto3's transfer errors wrap botocore's
    if isinstance(cause, ClientError):
        code = str(cause.response.get("Error", {}).get("Code", "error"))
        status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status < 500:
            return BoxFailed(f"file box {box!r} refused to {doing} {shown(key)} ({shown(code, 40)}); "
                             "check the box's credentials and permissions")
    return BoxUnavailable(f"file box {box!r} cannot be reached to {doing} {shown(key)}; retry shortly",
                          retry_after=5)


def unreachable(error: Exception, box: S3Box) -> BoxUnavailable:
    """One line for an S3 box that cannot be listed: the endpoint, the credentials or the bucket."""
    where = f"S3 box {box.name!r} (bucket {box.bucket!r} at {box.client.meta.endpoint_url})"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                    "ExpiredToken"):
            return BoxUnavailable(f"{where}: the credentials are refused ({code}); check the access and secret "
                                  "keys the --boxes file names (accessKeyEnv, secretKeyEnv) or AWS_ACCESS_KEY_ID")
        if code in ("NoSuchBucket", "404"):
            return BoxUnavailable(f"{where}: no such bucket; create it, or set `bucket:` for the box in --boxes")
        return BoxUnavailable(f"{where}: {code or 'error'}: {error.response.get('Error', {}).get('Message', '')}")
    return BoxUnavailable(f"{where} cannot be reached ({type(error).__name__}); check `endpoint:` in --boxes, "
                          "or that the S3 service is up")


def _pages(pages: Any, box: S3Box) -> Iterator[Any]:
    try:
        yield from pages
    except (ClientError, BotoCoreError) as error:
        raise unreachable(error, box) from None


class S3Box:
    def __init__(self, name: str, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, prefix: str = "") -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        )

    def __repr__(self) -> str:
        return f"S3Box({self.name!r}, bucket={self.bucket!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def fetch(self, key: str, destination: Path) -> int:
        try:
            self.client.download_file(self.bucket, self._key(key), str(destination), Config=TRANSFER)
        except ClientError as error:
            if _missing(error):
                raise NotFound(f"file box {self.name!r} has no object {shown(key)}") from None
            raise _trouble(self.name, "read", key, error) from error
        except (BotoCoreError, Boto3Error) as error:
            raise _trouble(self.name, "read", key, error) from error
        return destination.stat().st_size

    def store(self, source: Path, key: str, content_type: str | None = None) -> int:
        extra = {"ContentType": content_type} if content_type else None
        try:
            self.client.upload_file(str(source), self.bucket, self._key(key), ExtraArgs=extra, Config=TRANSFER)
        except (ClientError, BotoCoreError, Boto3Error) as error:
            raise _trouble(self.name, "write", key, error) from error
        return source.stat().st_size

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _missing(error):
                return None
            raise _trouble(self.name, "read", key, error) from error
        except BotoCoreError as error:
            raise _trouble(self.name, "read", key, error) from error
        modified = head.get("LastModified")
        return ObjectInfo(key, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'),
                          modified.timestamp() if modified is not None else None)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as error:
            if _missing(error):
                raise NotFound(f"file box {self.name!r} has no object {shown(key)}") from None
            raise _trouble(self.name, "read", key, error) from error
        except BotoCoreError as error:
            raise _trouble(self.name, "read", key, error) from error
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self.prefix + (prefix.strip("/") + "/" if prefix.strip("/") else "")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        for page in _pages(pages, self):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix):]
                if not key.endswith("/"):
                    modified = item.get("LastModified")
                    yield ObjectInfo(key, int(item["Size"]), str(item.get("ETag", "")).strip('"'),
                                     modified.timestamp() if modified is not None else None)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if not _missing(error):
                raise _trouble(self.name, "delete", key, error) from error
        except BotoCoreError as error:
            raise _trouble(self.name, "delete", key, error) from error

    def local_folder(self, prefix: str) -> Path | None:
        return None

