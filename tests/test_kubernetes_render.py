"""`mlcomponent render` and `mlcomponent crd`: golden files, official schemas, one source of truth."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlcomponent.kubernetes.crd import crd
from mlcomponent.kubernetes.render import OperatorConfig, render
from mlcomponent.manifest import load_manifest, problems_of
from tests.support import ROOT, SEED_MANIFEST, run_cli

GOLDEN = ROOT / "tests" / "golden"
MANIFESTS = {
    "seed": SEED_MANIFEST,
    "iris": ROOT / "examples/iris/mlcomponent.yaml",
    "iris-table": ROOT / "examples/iris/table.yaml",
    "digits": ROOT / "examples/digits/mlcomponent.yaml",
}
VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
CSI = OperatorConfig(registries={"python-package-registry": "https://pypi.example.org/simple"},
                     s3_endpoint="https://s3.example.org", s3_mounts={"storageClass": "csi-s3"})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_render_matches_its_golden_file(name: str) -> None:
    result = run_cli("render", str(MANIFESTS[name]))
    assert result.returncode == 0, result.stderr
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text(), f"rendered {name} differs from {golden}; UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("config", [OperatorConfig(), CSI], ids=["sync-init", "csi"])
@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_rendered_object_passes_the_official_schema_strictly(name: str, config: OperatorConfig,
                                                                   version: str) -> None:
    objects = render(load_manifest(MANIFESTS[name]), config)
    assert [o["kind"] for o in objects][-2:] == ["Deployment", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_crd_passes_the_official_schema_strictly() -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(crd(), version, strict=True)
        kubernetes_validate.validate(crd(cel=True), version, strict=True)


def test_rendered_deployment_has_what_the_platform_needs() -> None:
    objects = {o["kind"]: o for o in render(load_manifest(SEED_MANIFEST))}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert main["image"] == "example.com/lab-name/bm99-module-container-name:12ab345"
    assert main["resources"]["limits"] == {"cpu": "500m", "memory": "256M"}
    assert {"name": "CUSTOM_PARAMETER_1", "value": "3.14"} in main["env"]
    assert main["command"][:4] == ["python", "-m", "mlcomponent", "serve"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert main["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    install, sync = pod["initContainers"]
    assert "--index-url" in install["command"] and install["command"][-1].startswith("mlcomponent==")
    assert sync["command"][3:6] == ["sync-box", "mymodule-data-box", "/home/path/to"]
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in main["env"] if "valueFrom" in e}
    assert secret_refs == {"users-s3"}  # the copyS3Box's credentials
    assert objects["Service"]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    boxes = yaml.safe_load(objects["ConfigMap"]["data"]["boxes.yaml"])["boxes"]
    assert boxes["mymodule-data-box"] == {"mounted": True} and boxes["users"]["s3"]["bucket"] == "users"


def test_an_unknown_registry_is_refused_when_the_operator_has_no_default(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("registries: {internal: https://pypi.internal/simple}\ndefaultIndexUrl: null\n")
    result = run_cli("render", str(SEED_MANIFEST), "--config", str(config))
    assert result.returncode == 1
    assert "packageRegistryName: 'python-package-registry' is not a registry this operator knows" in result.stderr


# --------------------------------------------------------------------------- one source of truth

SEED = yaml.safe_load(SEED_MANIFEST.read_text())


def variant(path: str, value: Any) -> dict[str, Any]:
    data = yaml.safe_load(SEED_MANIFEST.read_text())
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


DELETE = object()
# Invalid variants that a structural schema can express; both must reject each.
EXPRESSIBLE = {
    "cpu": ("spec.image.resourceLimits.cpu", "half"),
    "memory": ("spec.image.resourceLimits.memory", "256 MB"),
    "env-name": ("spec.env.0.name", "1BAD-NAME"),
    "function": ("spec.mlService.inference.entryPoint.pythonFunction", "not dotted"),
    "model-path": ("spec.mlService.inference.model.modelPath", "relative/model.joblib"),
    "files-path": ("spec.mlService.inference.fileExchange.inferenceFilesPath", "tmp"),
    "box-name": ("spec.connectedBoxes.0.name", "Model_Box"),
    "no-image": ("spec.image.existingImageName", DELETE),
    "no-registry": ("spec.mlService.packageRegistryName", DELETE),
    "image-type": ("spec.image.existingImageName", 42),
    "long-string": ("spec.image.existingImageName", "x" * 2000),
}


def crd_validator() -> jsonschema.Draft4Validator:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(schema)


def test_the_spec_example_is_accepted_by_both() -> None:
    assert problems_of(SEED)[1] == []
    assert list(crd_validator().iter_errors(SEED)) == []


@pytest.mark.parametrize("name", sorted(EXPRESSIBLE))
def test_each_expressible_invalid_variant_is_rejected_by_both(name: str) -> None:
    path, value = EXPRESSIBLE[name]
    data = variant(path, value)
    assert problems_of(data)[1], f"pydantic accepted {name}"
    assert list(crd_validator().iter_errors(data)), f"the CRD schema accepted {name}"


def test_deploy_folder_is_what_install_renders_and_passes_the_schemas() -> None:
    result = run_cli("install", "--render")
    assert result.returncode == 0, result.stderr
    assert (ROOT / "deploy" / "mlcomponent.yaml").read_text() == result.stdout, \
        "deploy/mlcomponent.yaml is stale: mlcomponent install --render > deploy/mlcomponent.yaml"
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents] == ["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                              "ClusterRoleBinding", "ConfigMap", "Deployment"]
    for document in documents:
        for version in VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
    config = yaml.safe_load(documents[5]["data"]["config.yaml"])
    OperatorConfig.model_validate(config)
