"""`mlcomponent render` and `mlcomponent crd`: golden files, official schemas, one source of truth."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from mlcomponent import __version__
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
REGISTRIES = {"python-package-registry": "https://packages.example.org/simple"}
SYNC = OperatorConfig(registries=REGISTRIES, s3_endpoint="https://s3.example.org")
CSI = OperatorConfig(registries=REGISTRIES, s3_endpoint="https://s3.example.org",
                     s3_mounts={"storageClass": "csi-s3"})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_render_matches_its_golden_file(name: str) -> None:
    result = run_cli("render", str(MANIFESTS[name]))
    assert result.returncode == 0, result.stderr
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text(), f"rendered {name} differs from {golden}; UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("config", [SYNC, CSI], ids=["sync-init", "csi"])
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
    assert main["command"][:4] == ["python3", "-m", "mlcomponent", "serve"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert main["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    install, sync = pod["initContainers"]
    assert install["command"][:5] == ["python3", "-m", "pip", "--isolated", "install"]
    assert install["command"][-1] == f"mlcomponent=={__version__}"
    assert sync["command"][3:6] == ["sync-box", "mymodule-data-box", "/home/path/to"]
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in main["env"] if "valueFrom" in e}
    assert secret_refs == {"users-s3", "somename-mlcmp-files"}  # the copyS3Box's credentials; the links' key
    assert objects["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]
    command = main["command"]
    assert command[command.index("--grpc-port") + 1] == "8081" and command[command.index("--timeout") + 1] == "60"
    assert "--hide-errors" in command  # end users of someone else's module see no internals
    assert main["lifecycle"]["preStop"]["exec"]["command"][0] == "python3"
    boxes = yaml.safe_load(objects["ConfigMap"]["data"]["boxes.yaml"])["boxes"]
    assert boxes["mymodule-data-box"] == {"mounted": True} and boxes["users"]["s3"]["bucket"] == "users"


def test_an_unknown_registry_is_refused_when_the_operator_has_no_default(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("registries: {internal: https://pypi.internal/simple}\ndefaultIndexUrl: null\n")
    result = run_cli("render", str(SEED_MANIFEST), "--config", str(config))
    assert result.returncode == 1
    assert ("spec.mlService.packageRegistryName: 'python-package-registry' is not in the operator's `registries` "
            "(known: internal)") in result.stderr


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


# --------------------------------------------------------------------------- what the pod runs


def _pod(config: OperatorConfig = SYNC, manifest: Path = SEED_MANIFEST) -> dict[str, Any]:
    objects = {o["kind"]: o for o in render(load_manifest(manifest), config)}
    return objects["Deployment"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_every_command_runs_python3_which_debian_images_have() -> None:
    pod = _pod()
    commands = [c["command"] for c in pod["initContainers"] + pod["containers"]]
    commands.append(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"])
    assert len(commands) == 4 and all(command[0] == "python3" for command in commands), commands


def test_the_install_is_pinned_isolated_from_the_images_pip_config_and_binary_only() -> None:
    install = _pod()["initContainers"][0]
    command = install["command"]
    assert command[command.index("--index-url") + 1] == REGISTRIES["python-package-registry"]
    assert command[-1] == f"mlcomponent=={__version__}"
    assert "--isolated" in command and command[command.index("--only-binary") + 1] == ":all:"
    assert {"name": "PIP_CONFIG_FILE", "value": "/dev/null"} in install["env"]
    assert "--trusted-host" not in command  # https: nothing to trust blindly
    http = OperatorConfig(registries={"python-package-registry": "http://10.1.2.3:8080/simple"})
    command = _pod(http)["initContainers"][0]["command"]
    assert command[command.index("--trusted-host") + 1] == "10.1.2.3:8080"


def test_an_unpinned_package_is_refused() -> None:
    with pytest.raises(ValueError, match="must pin one exact version"):
        OperatorConfig(registries=REGISTRIES, package="mlcomponent")
    assert OperatorConfig(package="mlcomponent[kubernetes]==1.2.3").package == "mlcomponent[kubernetes]==1.2.3"


def test_by_default_no_registry_is_known_and_none_is_public() -> None:
    from mlcomponent.kubernetes.render import UnknownRegistry

    with pytest.raises(UnknownRegistry, match=r"not in the operator's `registries` \(known: none configured\)"):
        render(load_manifest(SEED_MANIFEST), OperatorConfig())
    preview = _pod(OperatorConfig.load(None))["initContainers"][0]["command"]  # `mlcomponent render` without --config
    url = preview[preview.index("--index-url") + 1]
    assert url == "https://unconfigured-registry.invalid/python-package-registry/simple", url
    for path in [ROOT / "Containerfile", *(ROOT / "deploy").glob("*"), ROOT / "docs" / "kubernetes.md",
                 *(ROOT / "mlcomponent" / "kubernetes").glob("*.py")]:
        assert "pypi.org" not in path.read_text(), f"{path} names the public index"


def test_the_pod_keeps_serving_until_it_left_the_endpoints_then_drains() -> None:
    from mlcomponent.kubernetes.render import GRACE_SECONDS, PRESTOP_SECONDS

    pod = _pod()
    main = pod["containers"][0]
    assert main["lifecycle"]["preStop"]["exec"]["command"][-1] == f"import time; time.sleep({PRESTOP_SECONDS})"
    assert main["command"][main["command"].index("--grace-period") + 1] == str(GRACE_SECONDS)
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_SECONDS + GRACE_SECONDS
    assert pod["shareProcessNamespace"] is True  # python3 is not PID 1: SIGTERM stops pip and a starting server
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_every_serve_flag_rendered_is_one_serve_accepts() -> None:
    from mlcomponent.kubernetes.render import serve_command

    accepted = run_cli("serve", "--help").stdout
    flags = [arg for arg in serve_command() if arg.startswith("--")]
    assert flags and all(flag in accepted for flag in flags), [f for f in flags if f not in accepted]


def test_a_port_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcomponent.kubernetes import render as module

    monkeypatch.setattr(module, "PORTS", [*module.PORTS, module.Port("grpc", "--grpc-port", 8081, 8081)])
    objects = {o["kind"]: o for o in render(load_manifest(SEED_MANIFEST), SYNC)}
    main = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert main["command"][main["command"].index("--grpc-port") + 1] == "8081"
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in main["ports"]
    assert {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP"} in objects["Service"]["spec"]["ports"]


# --------------------------------------------------------------------------- YAML people read


def test_the_yaml_dumper_never_writes_anchors_or_aliases() -> None:
    from mlcomponent.kubernetes.render import to_yaml

    shared = {"a": 1}
    text = to_yaml([{"x": shared, "y": shared, "z": [shared]}])
    assert "&" not in text and "*" not in text, text
    assert yaml.safe_load(text) == {"x": {"a": 1}, "y": {"a": 1}, "z": [{"a": 1}]}


@pytest.mark.parametrize("command", [["render", str(MANIFESTS[name])] for name in sorted(MANIFESTS)] +
                         [["install"], ["crd"], ["crd", "--cel"]], ids=lambda c: "-".join(c[:1] + [Path(c[-1]).stem]))
def test_printed_yaml_has_no_anchors_or_aliases(command: list[str]) -> None:
    result = run_cli(*command)
    assert result.returncode == 0, result.stderr
    for token in ("&id0", "*id0"):
        assert token not in result.stdout, f"`mlcomponent {' '.join(command)}` writes a YAML alias ({token})"


# --------------------------------------------------------------------------- install


def test_bare_install_prints_the_deploy_folder_and_render_is_an_accepted_alias() -> None:
    bare, alias = run_cli("install"), run_cli("install", "--render")
    assert bare.returncode == 0 and alias.returncode == 0, bare.stderr + alias.stderr
    assert bare.stdout == alias.stdout == (ROOT / "deploy" / "mlcomponent.yaml").read_text()


def test_install_takes_the_image_and_the_index(tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("s3Endpoint: http://s3.internal:9000\nregistries: {lab: https://lab.internal/simple}\n")
    result = run_cli("install", "--image", "registry.internal/mlc-operator:1", "--index-url",
                     "https://packages.internal/simple", "--config", str(config))
    assert result.returncode == 0, result.stderr
    documents = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    container = documents["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.internal/mlc-operator:1"
    assert "initContainers" not in documents["Deployment"]["spec"]["template"]["spec"]  # nothing installed at start
    settings = OperatorConfig.model_validate(yaml.safe_load(documents["ConfigMap"]["data"]["config.yaml"]))
    assert settings.registries == {"lab": "https://lab.internal/simple",
                                   "python-package-registry": "https://packages.internal/simple"}
    assert settings.s3_endpoint == "http://s3.internal:9000"
    bad = tmp_path / "bad.yaml"
    bad.write_text("package: mlcomponent\n")
    refused = run_cli("install", "--config", str(bad))
    assert refused.returncode == 1 and "must pin one exact version" in refused.stderr


def test_the_default_operator_config_knows_no_registry() -> None:
    documents = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "mlcomponent.yaml").read_text())}
    text = documents["ConfigMap"]["data"]["config.yaml"]
    assert OperatorConfig.model_validate(yaml.safe_load(text)).registries == {}
    assert "there is no public index by default" in text


def test_the_containerfile_installs_this_version() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert f"ARG VERSION={__version__}\n" in text
    assert '"mlcomponent[kubernetes]==${VERSION}"' in text and "--isolated" in text
