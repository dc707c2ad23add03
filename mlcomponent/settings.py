"""Settings for one serving process: the manifest plus the serve options (``options.py``), paths resolved.

The environment is passed in (never read from ``os.environ`` here), so tests can
build settings without touching the process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlcomponent.manifest import Manifest, load_manifest
from mlcomponent.options import MB as MB  # re-exported: ServeOptions and its helpers live in options.py
from mlcomponent.options import OPTIONS_ENV as OPTIONS_ENV
from mlcomponent.options import ServeOptions as ServeOptions
from mlcomponent.options import parse_duration as parse_duration

FILES_SECRET_ENV = "MLCOMPONENT_FILES_SECRET"
# The numeric libraries' thread counts, set from the manifest's cpu limit unless spec.env sets them.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")


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


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def memory_bytes(quantity: str | None) -> int | None:
    """Bytes in a Kubernetes memory quantity ('256M' -> 256000000, '1Gi' -> 1073741824, '1e9')."""
    if not quantity:
        return None
    text = quantity.strip().lstrip("+")
    try:
        if text[-2:] in _BINARY:
            return int(float(text[:-2]) * _BINARY[text[-2:]])
        if text[-1:] in _DECIMAL:
            return int(float(text[:-1]) * _DECIMAL[text[-1:]])
        return int(float(text))
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
    token: str | None = field(repr=False, default=None)  # read once at start (it is then hidden from user code)
    files_secret: str | None = field(repr=False, default=None)  # MLCOMPONENT_FILES_SECRET, read once

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
            token=read_auth_token(options, environ),
            files_secret=environ.get(FILES_SECRET_ENV) or None,
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
        return self.token

    @property
    def secret_env_names(self) -> frozenset[str]:
        """Variables user code never sees: the bearer token's and the file-link secret's."""
        return frozenset(name for name in (self.options.auth_token_env, FILES_SECRET_ENV) if name)

    @property
    def memory_limit(self) -> int | None:
        """``resourceLimits.memory`` in bytes: the inference worker's cap (None with ``--no-limits``)."""
        limits = self.manifest.spec.image.resource_limits
        if not self.options.limits or limits is None:
            return None
        return memory_bytes(limits.memory)

    @property
    def thread_env(self) -> dict[str, str]:
        """OMP_NUM_THREADS and its kin from the cpu limit (per worker), unless spec.env or the environment sets them."""
        limits = self.manifest.spec.image.resource_limits
        cores = cpu_cores(limits.cpu if limits else None)
        if cores is None:
            return {}
        threads = str(max(1, math.floor(cores / max(1, self.workers))))
        manifest_env = self.manifest_env
        return {name: threads for name in THREAD_VARIABLES if name not in manifest_env and name not in self.environ}

    @property
    def worker_env(self) -> dict[str, str]:
        """What the inference worker's environment gets before the module is imported."""
        return {**self.thread_env, **self.manifest_env}


def read_auth_token(options: ServeOptions, environ: Mapping[str, str]) -> str | None:
    """The bearer token; a token variable or file that is missing or empty refuses to start (ValueError)."""
    if options.auth_token_file:
        path = Path(options.auth_token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
            raise ValueError(f"--auth-token-file {path}: cannot read the token: {reason}") from None
        if not token:
            raise ValueError(f"--auth-token-file {path} is empty; put the bearer token in it")
        return token
    if options.auth_token_env:
        name = options.auth_token_env
        if name not in environ:
            raise ValueError(f"--auth-token-env {name}: the environment variable {name} is not set; "
                             "set it to the bearer token")
        token = environ[name].strip()
        if not token:
            raise ValueError(f"--auth-token-env {name}: the environment variable {name} is empty; "
                             "set it to the bearer token")
        return token
    return None
