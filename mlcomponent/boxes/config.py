"""The ``--boxes`` file: which platform box is a local folder and which is an S3 bucket.

```yaml
boxes:
  users:                        # the s3BoxName of a connected box
    s3:
      endpoint: http://127.0.0.1:9000
      bucket: users             # default: the box name
      region: us-east-1
      accessKeyEnv: USERS_KEY   # names of env vars holding credentials
      secretKeyEnv: USERS_SECRET
  mymodule-data-box:
    folder: /srv/models         # a local folder instead of <data-root>/boxes/<name>
    mounted: true               # the box's subPath is already at its `path` (a real mount)
```
Boxes not listed are local folders under ``<data-root>/boxes/<s3BoxName>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mlcomponent.boxes.base import Box
from mlcomponent.boxes.local import LocalBox


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class S3Settings(_Model):
    endpoint: str | None = Field(None, description="S3 endpoint URL; default: AWS or AWS_ENDPOINT_URL.")
    bucket: str | None = Field(None, description="Bucket; default: the box name.")
    region: str | None = None
    prefix: str = ""
    access_key_env: str | None = Field(None, description="Env var holding the access key id.")
    secret_key_env: str | None = Field(None, description="Env var holding the secret key.")


class BoxSettings(_Model):
    s3: S3Settings | None = None
    folder: str | None = None
    mounted: bool = False


class BoxesConfig(_Model):
    boxes: dict[str, BoxSettings] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> BoxesConfig:
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            return cls.model_validate(data)
        except OSError as error:
            raise ValueError(f"--boxes {path}: cannot read: {error.strerror}") from None
        except (yaml.YAMLError, ValidationError) as error:
            raise ValueError(f"--boxes {path}: {error}") from None

    def settings_for(self, box_name: str) -> BoxSettings:
        return self.boxes.get(box_name) or BoxSettings()


def open_box(box_name: str, settings: BoxSettings, data_root: Path, environ: Mapping[str, str]) -> Box:
    """Build the Box for one platform box name."""
    if settings.s3 is not None:
        from mlcomponent.boxes.s3 import S3Box  # boto3 only when an S3 box is configured

        s3 = settings.s3

        def secret(name: str | None) -> str | None:
            if name is None:
                return None
            if name not in environ:
                raise ValueError(f"box {box_name!r}: environment variable {name!r} (named in --boxes) is not set")
            return environ[name]

        return S3Box(box_name, s3.bucket or box_name, endpoint_url=s3.endpoint or environ.get("AWS_ENDPOINT_URL"),
                     region=s3.region, access_key=secret(s3.access_key_env),
                     secret_key=secret(s3.secret_key_env), prefix=s3.prefix)
    folder = Path(settings.folder) if settings.folder else data_root / "boxes" / box_name
    folder.mkdir(parents=True, exist_ok=True)
    return LocalBox(box_name, folder)
