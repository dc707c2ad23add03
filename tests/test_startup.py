"""Start-up: the entry point is checked before serving, and spec.env reaches the module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import HTTP, free_port, run_cli, serve, write_manifest


@pytest.mark.parametrize(
    ("function", "needle"),
    [
        ("import_error.inference", "it imports 'a_module_that_does_not_exist', which is not installed in this Python"),
        ("nowhere.inference", "no module named 'nowhere' under pythonPath"),
        ("echo.predict", "module 'echo' has no attribute 'predict'"),
        ("bad_signature.inference", "cannot be called as inference(parameters, inputs, output_fields, model_key, model)"),
    ],
)
def test_entry_point_problems_fail_at_start_up_with_the_reason(tmp_path: Path, function: str, needle: str) -> None:
    manifest = write_manifest(tmp_path, function)
    result = run_cli("serve", str(manifest), "--port", str(free_port()), "--data-root", str(tmp_path / "data"),
                     timeout=60)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and needle in result.stderr, result.stderr
    checked = run_cli("validate", str(manifest))  # the code is here, so validate checks it as serve does
    assert checked.returncode == 1 and needle in checked.stderr, checked.stderr
    assert "not checked" not in checked.stdout


def test_spec_env_is_applied_before_the_module_is_imported(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "env_reader.inference", env={"GREETING": "hello from the manifest"})
    with serve(manifest, data_root=tmp_path / "data") as server:
        answer = HTTP.post(server.url + "/v2/models/test-model/infer", json={"inputs": []}).json()
    assert answer["outputs"][0]["data"] == ["hello from the manifest"]


def test_invalid_manifest_stops_serve_with_the_yaml_path(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "echo.inference")
    manifest.write_text(manifest.read_text().replace("fileBox: user-box", "fileBox: missing-box"))
    result = run_cli("serve", str(manifest), "--port", "1")
    assert result.returncode == 1
    assert "spec.mlService.inference.fileExchange.fileBox: 'missing-box' names no entry" in result.stderr
