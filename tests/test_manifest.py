"""`mlcomponent validate`: the spec's example passes verbatim; every rule names its YAML path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcomponent.errors import ManifestError
from mlcomponent.manifest import parse_manifest_text
from tests.support import SEED_MANIFEST, run_cli

SEED = SEED_MANIFEST.read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest_text(text, "m.yaml")
    return caught.value.problems


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_spec_example_is_accepted_verbatim() -> None:
    manifest = parse_manifest_text(SEED)
    assert manifest.metadata.name == "somename-mlcmp"
    assert manifest.inference.model.model_path == "/home/path/to/model.joblib"
    assert [b.name for b in manifest.spec.connected_boxes] == ["model-box", "user-box"]


def test_validate_cli_accepts_the_spec_example_and_says_entry_point_not_checked() -> None:
    result = run_cli("validate", str(SEED_MANIFEST))
    assert result.returncode == 0, result.stderr
    assert "manifest OK" in result.stdout
    assert "entry point not checked" in result.stdout


@pytest.mark.parametrize(
    ("old", "new", "path", "needle"),
    [
        ('apiVersion: "unified-platform.cs.hse.ru/v1"', "apiVersion: v1", "apiVersion", "unified-platform.cs.hse.ru/v1"),
        ("kind: MLComponent", "kind: Deployment", "kind", "'MLComponent'"),
        ("name: somename-mlcmp", "name: Some_Name", "metadata.name", "DNS-1123"),
        ("fileBox: user-box", "fileBox: user-bx", "spec.mlService.inference.fileExchange.fileBox", "did you mean 'user-box'"),
        ("modelBox: model-box", "modelBox: nothing", "spec.mlService.inference.model.modelBox", "names no entry"),
        ("cpu: 500m", "cpu: half", "spec.image.resourceLimits.cpu", "Kubernetes quantity"),
        ("memory: 256M", "memory: 256 megs", "spec.image.resourceLimits.memory", "Kubernetes quantity"),
        ("name: CUSTOM_PARAMETER_1", "name: 1CUSTOM-PARAM", "spec.env[0].name", "environment variable name"),
        ("pythonFunction: modulename.predict.inference", "pythonFunction: modulename/predict.py",
         "spec.mlService.inference.entryPoint.pythonFunction", "dotted Python name"),
        ("modelPath: /home/path", "modelPth: /home/path", "spec.mlService.inference.model.modelPth",
         "did you mean 'modelPath'"),
    ],
)
def test_each_rule_names_the_yaml_path_and_line(old: str, new: str, path: str, needle: str) -> None:
    assert old in SEED
    text = SEED.replace(old, new, 1)
    found = problems(text)
    matching = [p for p in found if f": {path}:" in p]
    assert matching, found
    assert needle in matching[0]
    assert matching[0].startswith(f"m.yaml:{line_of(text, new)}: {path}:"), matching[0]


def test_box_with_both_mount_and_copy() -> None:
    text = SEED.replace("      copyS3Box:\n", "      mountS3Box: {s3BoxName: x, subPath: y}\n      path: /x\n      copyS3Box:\n")
    found = problems(text)
    assert any("spec.connectedBoxes[1]: box 'user-box' has both of mountS3Box and copyS3Box" in p for p in found), found


def test_box_with_neither_mount_nor_copy() -> None:
    text = SEED.replace("      copyS3Box:\n        s3BoxName: users\n", "      path: /data\n")
    found = problems(text)
    assert any("spec.connectedBoxes[1]: box 'user-box' has neither" in p for p in found), found


def test_duplicate_box_names() -> None:
    text = SEED.replace("    - name: user-box", "    - name: model-box")
    found = problems(text)
    line = [n for n, text_line in enumerate(text.splitlines(), 1) if "- name: model-box" in text_line][1]
    assert any(p.startswith(f"m.yaml:{line}: spec.connectedBoxes[1].name: duplicate box name 'model-box'")
               for p in found), found


def test_unknown_top_level_field_has_did_you_mean() -> None:
    found = problems(SEED.replace("spec:\n", "spek: 1\nspec:\n", 1))
    assert any("(document)" not in p and "spek" in p and "did you mean 'spec'" in p for p in found), found


def test_model_path_outside_its_box() -> None:
    found = problems(SEED.replace("modelPath: /home/path/to/model.joblib", "modelPath: /etc/model.joblib"))
    assert any("spec.mlService.inference.model.modelPath" in p and "not under the model box's path" in p
               for p in found), found


def test_all_problems_reported_at_once_with_lines(tmp_path: Path) -> None:
    text = SEED.replace("cpu: 500m", "cpu: lots").replace("fileBox: user-box", "fileBox: nobox")
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1
    assert f"{manifest}:{line_of(text, 'cpu: lots')}: spec.image.resourceLimits.cpu" in result.stderr
    assert f"{manifest}:{line_of(text, 'fileBox: nobox')}: spec.mlService.inference.fileExchange.fileBox" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_not_yaml(tmp_path: Path) -> None:
    found = problems("apiVersion: [unclosed")
    assert "not valid YAML" in found[0]
