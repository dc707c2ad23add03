"""`mlcomponent validate`: the spec's example passes verbatim; every rule names its YAML path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcomponent.errors import ManifestError
from mlcomponent.manifest import parse_manifest_text
from tests.support import SEED_MANIFEST, SHARED_SEED_MANIFEST, free_port, not_run, run_cli

SEED = SEED_MANIFEST.read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest_text(text, "m.yaml")
    return caught.value.problems


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_the_copied_spec_example_is_still_verbatim() -> None:
    if not SHARED_SEED_MANIFEST.is_file():
        not_run(f"{SHARED_SEED_MANIFEST} is not here to compare the copy in tests/fixtures/spec with")
    assert SEED_MANIFEST.read_bytes() == SHARED_SEED_MANIFEST.read_bytes()


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


def test_duplicate_env_names_are_refused_as_the_crd_refuses_them() -> None:
    text = SEED.replace("name: ANOTHER_PARAMETER", "name: CUSTOM_PARAMETER_1")
    found = problems(text)
    line = [n for n, text_line in enumerate(text.splitlines(), 1) if "name: CUSTOM_PARAMETER_1" in text_line][1]
    assert any(p.startswith(f"m.yaml:{line}: spec.env[1].name: duplicate env name 'CUSTOM_PARAMETER_1' (also env[0])")
               for p in found), found


@pytest.mark.parametrize("sub_path", ["../../etc", "models/../../../etc", "/etc", "a//b", "./models", "a/./b", "..",
                                      "models\\\\weights"])
def test_a_sub_path_that_leaves_its_box_or_is_odd_is_refused(sub_path: str) -> None:
    text = SEED.replace("subPath: users/developer/file_groups/models", f"subPath: '{sub_path}'")
    found = problems(text)
    path = "spec.connectedBoxes[0].mountS3Box.subPath"
    assert any(p.startswith(f"m.yaml:{line_of(text, 'subPath:')}: {path}:") and "relative path inside the box" in p
               for p in found), found


def test_serve_refuses_a_sub_path_out_of_its_box_in_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "escape.yaml"
    manifest.write_text(SEED.replace("subPath: users/developer/file_groups/models", "subPath: ../../etc"))
    result = run_cli("serve", str(manifest), "--port", str(free_port()), "--data-root", str(tmp_path / "data"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == (f"{manifest}:{line_of(SEED, 'subPath:')}: spec.connectedBoxes[0].mountS3Box.subPath: "
                             "'../../etc' is not a relative path inside the box (no leading '/', no '.', '..' or "
                             "empty segments, no '\\')\n")


@pytest.mark.parametrize("sub_path", ["", "models", "models/", "users/developer/file_groups/models", ".cache/m", "a..b"])
def test_ordinary_sub_paths_are_accepted(sub_path: str) -> None:
    manifest = parse_manifest_text(SEED.replace("subPath: users/developer/file_groups/models", f"subPath: '{sub_path}'"))
    box = manifest.spec.connected_boxes[0].mount_s3_box
    assert box is not None and box.sub_path == sub_path


def test_the_crd_carries_the_sub_path_rule() -> None:
    from mlcomponent.kubernetes.crd import crd

    schema = crd(False)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    box = schema["properties"]["spec"]["properties"]["connectedBoxes"]["items"]["properties"]["mountS3Box"]
    assert box["properties"]["subPath"]["pattern"].startswith("^(?:")


# ------------------------------------------------------------------------- hostile manifests


def test_a_nul_in_an_env_value_is_refused_by_validate(tmp_path: Path) -> None:
    manifest = tmp_path / "nul.yaml"
    manifest.write_text(SEED.replace('value: "3.14"', 'value: "3\\0.14"'))
    result = run_cli("validate", str(manifest))
    assert result.returncode == 1, result.stdout
    assert "manifest OK" not in result.stdout
    line = line_of(SEED, 'value: "3.14"')
    assert result.stderr.strip() == (f"{manifest}:{line}: spec.env[0].value: contains a NUL "
                                     "character (\\0), which no name, path or environment value can hold; remove it")


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_file_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    import time

    text = billion_laughs()
    assert len(text) < 1500  # 9 ** 9 = 387,420,489 strings once expanded
    started = time.process_time()  # CPU time: what the file costs, whatever else the machine runs
    found = problems(text)
    assert time.process_time() - started < 0.5
    assert found == ['m.yaml: refused: anchors and aliases expand it past 10,000 values (a "billion laughs" file?); '
                     "write the manifest out in full"]
    manifest = tmp_path / "laughs.yaml"
    manifest.write_text(text)
    result = run_cli("validate", str(manifest), timeout=30)
    assert (result.returncode, result.stderr.count("\n")) == (1, 1), result.stderr
    assert "Traceback" not in result.stderr


def test_anchors_and_aliases_within_the_limit_are_expanded() -> None:
    text = SEED.replace("  env:\n", "  env: &env\n").replace("  mlService:\n", "  x-copy: *env\n  mlService:\n")
    assert "unknown field 'x-copy'" in problems(text)[0]  # the alias was expanded and then checked like any field
    shared = SEED.replace("      memory: 256M\n", "      memory: &mem 256M\n").replace('value: "some_value"', "value: *mem")
    assert parse_manifest_text(shared).spec.env[1].value == "256M"


def test_an_alias_to_its_own_parent_is_refused() -> None:
    assert "refused: anchors and aliases expand it" in problems("a: &a [1, *a]\n")[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 100_000 + "]" * 100_000, "m.yaml: refused: line 1: nested deeper than 32 levels; a manifest is 6 levels deep"),
    ("{a: " * 100_000 + "1" + "}" * 100_000, "m.yaml: refused: line 1: nested deeper than 32 levels"),
    ("a: " + "1" * 5000, "m.yaml: refused: a value cannot be read: Exceeds the limit (4300 digits)"),
    ("a: 1\n---\nb: 2\n", "m.yaml: not valid YAML: line 2, column 1: but found another document"),
    ("a: [unclosed", "m.yaml: not valid YAML: line 1, column 13: expected ',' or ']'"),
    ("kind: \x00", "m.yaml: not valid YAML: character 7: special characters are not allowed"),
    ("", "m.yaml: (document): a manifest must be a YAML mapping"),
    ("- a list", "m.yaml:1: (document): a manifest must be a YAML mapping"),
])
def test_malformed_files_give_one_line(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1 and "\n" not in found[0], found
    assert found[0].startswith(expected), found


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfeapiVersion: v1\n", "not UTF-8 text (byte 0xff at offset 0); save the manifest as UTF-8"),
    (("[" * 100_000 + "]" * 100_000).encode(), "refused: line 1: nested deeper than 32 levels; a manifest is 6 levels deep"),
    (b"x" * (1024 * 1024 + 1), "refused: larger than 1024 KiB; a manifest is a few hundred bytes"),
])
def test_unreadable_files_give_one_line_from_the_cli(tmp_path: Path, content: bytes, expected: str) -> None:
    manifest = tmp_path / "hostile.yaml"
    manifest.write_bytes(content)
    for command in ("validate", "serve", "render"):
        result = run_cli(command, str(manifest), timeout=60)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stderr == f"{manifest}: {expected}\n", (command, result.stderr)


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    manifest = tmp_path / "bom.yaml"
    manifest.write_bytes(b"\xef\xbb\xbf" + SEED.encode())
    result = run_cli("validate", str(manifest))
    assert result.returncode == 0, result.stderr
