"""The limits' small parts, without a server: quantities, durations, thread counts, tokens, keys,
the connection cap, signed keys and how a worker's death is told."""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlcomponent.boxes.base import check_key
from mlcomponent.errors import BadRequest, InvalidInput
from mlcomponent.garbage import FLOOR, OBJECTS_PER_REQUEST, YoungGeneration, ceiling_for, next_threshold
from mlcomponent.http.connections import default_max_connections
from mlcomponent.runtime import memory
from mlcomponent.runtime.files import FileKeys
from mlcomponent.runtime.frames import WorkerConfig
from mlcomponent.runtime.isolated import ProcessRunner
from mlcomponent.settings import ServeOptions, Settings, memory_bytes, parse_duration, read_auth_token
from tests.support import run_cli, write_manifest


@pytest.mark.parametrize(("quantity", "expected"), [
    ("256M", 256_000_000), ("1Gi", 2**30), ("512Mi", 512 * 2**20), ("1e9", 10**9), ("128974848", 128974848),
    ("1.5G", 1_500_000_000), ("100k", 100_000), (None, None), ("", None),
])
def test_memory_quantities(quantity: str | None, expected: int | None) -> None:
    assert memory_bytes(quantity) == expected


@pytest.mark.parametrize(("text", "seconds"), [
    ("24h", 86400.0), ("30m", 1800.0), ("90s", 90.0), ("2d", 172800.0), ("45", 45.0), ("0.5s", 0.5),
    ("forever", None), ("never", None),
])
def test_keep_files_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "soon", "1w", "inf"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def settings(tmp_path: Path, cpu: str, env: dict[str, str], environ: dict[str, str], **options: object) -> Settings:
    manifest = write_manifest(tmp_path, "echo.inference", cpu=cpu, env=env)
    return Settings.build(ServeOptions(manifest=str(manifest), **options), environ)  # type: ignore[arg-type]


def test_cpu_sets_thread_counts_per_worker_unless_spec_env_or_the_environment_does(tmp_path: Path) -> None:
    chosen = settings(tmp_path, "4", {"OMP_NUM_THREADS": "7"}, {"MKL_NUM_THREADS": "3"}, workers=2)
    env = chosen.worker_env
    assert env["OMP_NUM_THREADS"] == "7"  # spec.env wins
    assert "MKL_NUM_THREADS" not in env  # the environment serve runs in wins (the worker inherits it)
    assert env["OPENBLAS_NUM_THREADS"] == env["NUMEXPR_NUM_THREADS"] == "2"  # 4 cores over 2 workers
    assert settings(tmp_path, "500m", {}, {}).worker_env["OMP_NUM_THREADS"] == "1"


def test_the_default_deadline_is_60_seconds_and_0_turns_it_off(tmp_path: Path) -> None:
    assert ServeOptions(manifest="m").timeout == 60
    shown = run_cli("serve", "--help")
    assert "--timeout FLOAT" in shown.stdout and "0: none. [default: 60.0]" in " ".join(shown.stdout.split())


def test_memory_limit_comes_from_the_manifest_unless_no_limits(tmp_path: Path) -> None:
    assert settings(tmp_path, "1", {}, {}).memory_limit == 256_000_000
    assert settings(tmp_path, "1", {}, {}, limits=False).memory_limit is None


def test_tokens_that_are_missing_or_empty_refuse_to_start(tmp_path: Path) -> None:
    def token(environ: dict[str, str], **options: str) -> str | None:
        return read_auth_token(ServeOptions(manifest="m", **options), environ)  # type: ignore[arg-type]

    assert token({"T": " tok \n"}, auth_token_env="T") == "tok"
    with pytest.raises(ValueError, match="the environment variable T is not set"):
        token({}, auth_token_env="T")
    with pytest.raises(ValueError, match="the environment variable T is empty"):
        token({"T": "  "}, auth_token_env="T")
    (tmp_path / "token").write_text("from-file\n")
    assert token({}, auth_token_file=str(tmp_path / "token")) == "from-file"
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ValueError, match="blank is empty"):
        token({}, auth_token_file=str(tmp_path / "blank"))
    assert token({}) is None


def test_long_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(BadRequest) as caught:
        check_key("k" * 10_000)
    assert "is too long" in caught.value.message and len(caught.value.message) < 200
    with pytest.raises(BadRequest):
        check_key("a/" + "s" * 256)
    assert check_key("a/" + "s" * 255) == "a/" + "s" * 255


def test_the_connection_cap_leaves_half_the_open_files() -> None:
    assert default_max_connections(256) == 128
    assert default_max_connections(1024) == 512
    assert default_max_connections(1_000_000) == 4096
    assert default_max_connections(10) == 8


def test_the_young_generations_ceiling_holds_every_request_in_flight_at_the_connection_cap() -> None:
    assert ceiling_for(default_max_connections(1_000_000)) == 4096 * OBJECTS_PER_REQUEST
    assert ceiling_for(8) == FLOOR  # a small cap keeps the floor
    assert next_threshold(20_000, 20_000, 0, FLOOR, 80_000) == 40_000  # all alive: run half as often
    assert next_threshold(80_000, 80_000, 100, FLOOR, 80_000) == 80_000  # not past the ceiling
    assert next_threshold(80_000, 80_000, 60_000, FLOOR, 80_000) == 40_000  # mostly garbage: twice as often
    assert next_threshold(20_000, 20_000, 20_000, FLOOR, 80_000) == 20_000  # not under the floor
    assert next_threshold(40_000, 40_000, 15_000, FLOOR, 80_000) == 40_000  # in between: stays


def test_the_young_generation_runs_as_often_as_it_finds_garbage() -> None:
    """Live objects (requests in flight) raise the threshold; cycles (grpcio leaves some per call) lower it."""
    young = YoungGeneration(ceiling=80_000)
    saved, was_enabled = gc.get_threshold(), gc.isenabled()
    gc.collect()
    gc.disable()  # only the collections below run, each with the hook
    young.install()
    try:
        assert gc.get_threshold()[0] == FLOOR
        live = [[] for _ in range(30_000)]
        gc.collect(0)
        assert gc.get_threshold()[0] == 40_000
        more = [[] for _ in range(30_000)]
        gc.collect(0)
        assert gc.get_threshold()[0] == 80_000
        del live, more
        for _ in range(30_000):
            cycle: list[object] = []
            cycle.append(cycle)
        del cycle
        gc.collect(0)
        assert gc.get_threshold()[0] == 40_000
    finally:
        young.uninstall()
        gc.set_threshold(*saved)
        if was_enabled:
            gc.enable()


def test_only_keys_this_service_signed_are_servable() -> None:
    keys = FileKeys("m", b"secret")
    folder = keys.output_folder("0123456789abcdef0123456789abcdef")
    assert keys.servable(f"{folder}/out.csv")
    assert not FileKeys("m", b"another secret").servable(f"{folder}/out.csv")
    assert not FileKeys("other", b"secret").servable(f"{folder}/out.csv".replace("/m/", "/other/"))
    assert not keys.servable(f"{folder}/nested/out.csv")
    assert not keys.servable(f"{folder.replace('/outputs/', '/uploads/')}/out.csv")
    assert not keys.servable(folder[:-1] + ("0" if folder[-1] != "0" else "1") + "/out.csv")


def test_invalid_input_is_a_400_and_a_value_error() -> None:
    error = InvalidInput("no rows")
    assert isinstance(error, ValueError) and error.status == 400 and str(error) == "no rows"


def runner(memory_label: str | None = "256M") -> ProcessRunner:
    config = WorkerConfig("/", "m.f", "key", {}, memory_bytes(memory_label) if memory_label else None)
    return ProcessRunner(config, "m", memory_label=memory_label)


def test_a_sigkill_is_told_with_the_memory_limit_and_an_oom_kill_is_recognised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    monkeypatch.setattr(memory, "OOM_EVENT_FILES", (events,))
    watched = runner()
    watched._oom_kills = memory.oom_kills()
    dead = SimpleNamespace(returncode=-9, stopped_because=None, memory_peak=None)
    told = watched._death_error(dead)  # type: ignore[arg-type]
    assert type(told).__name__ == "WorkerDied"
    assert "killed by SIGKILL" in told.message and "resourceLimits.memory = 256M, 244 MiB" in told.message
    events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")  # the kernel killed it meanwhile
    told = watched._death_error(dead)  # type: ignore[arg-type]
    assert type(told).__name__ == "MemoryLimitExceeded"
    assert "killed by the kernel's out-of-memory killer" in told.message
    stopped = SimpleNamespace(returncode=-9, stopped_because="a call ran past its deadline", memory_peak=None)
    assert "stopped: a call ran past its deadline" in watched._death_error(stopped).message  # type: ignore[arg-type]
    assert "no memory limit is set" in runner(None)._death_error(dead).message  # type: ignore[arg-type]
