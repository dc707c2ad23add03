"""Settings for one serving process: the manifest plus the CLI's options, paths resolved.

The environment is passed in (never read from ``os.environ`` here), so tests can
build settings without touching the process.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlcomponent.manifest import Manifest, load_manifest

OPTIONS_ENV = "MLCOMPONENT_SERVE_OPTIONS"
MB = 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``mlcomponent serve`` takes on its command line."""

    manifest: str
    module_root: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    data_root: str | None = None
    boxes: str | None = None
    workers: int | None = None
    timeout: float | None = None
    max_queue: int = 64
    max_json_body: int = 64 * MB
    max_upload: int = 1024 * MB
    max_inputs: int = 64
    max_elements: int = 16 * MB
    log_format: str = "text"
    log_level: str = "info"
    auth_token_env: str | None = None
    auth_token_file: str | None = None
    grace_period: float = 30.0
    isolate: bool = True
    grpc_port: int | None = None  # the protocol's gRPC service beside HTTP (off unless asked)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServeOptions:
        try:
            return cls(**json.loads(environ[OPTIONS_ENV]))
        except KeyError:
            raise RuntimeError(f"{OPTIONS_ENV} is not set; start the service with `mlcomponent serve`") from None


def cpu_cores(quantity: str | None) -> float | None:
    """Cores in a Kubernetes cpu quantity ('500m' -> 0.5, '2' -> 2.0)."""
    if not quantity:
        return None
    if quantity.endswith("m"):
        return float(quantity[:-1]) / 1000
    try:
        return float(quantity)
    except ValueError:
        return None


def default_workers(manifest: Manifest, available: int | None = None) -> int:
    """One worker per whole core of the cpu limit (at least one, at most the cores here)."""
    limits = manifest.spec.image.resource_limits
    cores = cpu_cores(limits.cpu if limits else None)
    available = available or os.cpu_count() or 1
    if cores is None:
        return 1
    return max(1, min(available, math.floor(cores)))


@dataclass(frozen=True)
class Settings:
    options: ServeOptions
    manifest: Manifest
    manifest_path: Path
    data_root: Path
    workers: int
    environ: Mapping[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def build(cls, options: ServeOptions, environ: Mapping[str, str]) -> Settings:
        manifest_path = Path(options.manifest).resolve()
        manifest = load_manifest(manifest_path)
        data_root = Path(options.data_root).resolve() if options.data_root else manifest_path.parent / "data"
        return cls(
            options=options,
            manifest=manifest,
            manifest_path=manifest_path,
            data_root=data_root,
            workers=options.workers or default_workers(manifest),
            environ=environ,
        )

    @property
    def model_name(self) -> str:
        return self.manifest.metadata.name

    @property
    def module_root(self) -> Path:
        """Where pythonPath is relative to: --module-root, else the manifest's folder."""
        if self.options.module_root:
            return Path(self.options.module_root).resolve()
        return self.manifest_path.parent

    @property
    def python_path(self) -> Path:
        return (self.module_root / self.manifest.inference.entry_point.python_path).resolve()

    @property
    def manifest_env(self) -> dict[str, str]:
        return {var.name: var.value for var in self.manifest.spec.env}

    def files_root(self) -> Path:
        """``inferenceFilesPath`` when it exists and is writable here, else remapped under data-root."""
        declared = Path(self.manifest.inference.file_exchange.inference_files_path)
        if declared.is_dir() and os.access(declared, os.W_OK | os.X_OK):
            return declared
        return self.data_root / "files" / declared.relative_to(declared.anchor)

    def auth_token(self) -> str | None:
        if self.options.auth_token_file:
            return Path(self.options.auth_token_file).read_text().strip() or None
        if self.options.auth_token_env:
            return self.environ.get(self.options.auth_token_env) or None
        return None
