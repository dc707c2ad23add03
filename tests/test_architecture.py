"""The import rule of docs/architecture.md, checked over the source (ast, no imports run).

Layers, lowest first; a module may import its own layer and the layers below it:

    errors, logs → manifest → settings → spec → protocol → boxes → runtime
    → metrics, http, grpc (transports) → client, scaffold, cli_output, ship → cli, cli_ship

``kubernetes`` sits beside ``settings``: it reads manifests and never touches the
runtime or a transport. Web frameworks are the transports' business only.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGE = ROOT / "mlcomponent"
LAYERS = [
    {"__init__", "errors", "logs"},
    {"manifest"},
    {"settings", "kubernetes"},
    {"spec"},
    {"protocol"},
    {"boxes"},
    {"runtime"},
    {"metrics", "http", "grpc"},
    {"client", "scaffold", "cli_output", "ship"},
    {"cli", "cli_ship", "__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
WEB_FRAMEWORKS = {"starlette", "uvicorn", "fastapi", "grpc"}
TRANSPORTS = {"http", "grpc", "cli", "__main__"}


def _top(module: str) -> str:
    """``mlcomponent.runtime.files`` → ``runtime``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sources() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))}


def _violations(sources: dict[Path, str]) -> list[str]:
    problems = []
    for path, source in sources.items():
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        layer = _top(module.removesuffix(".__init__"))
        for line, imported in _imports(source):
            where = f"{path.relative_to(ROOT)}:{line}"
            root = imported.split(".")[0]
            if root in WEB_FRAMEWORKS and layer not in TRANSPORTS:
                problems.append(f"{where}: {layer} imports the web framework {imported}")
            if root != "mlcomponent":
                continue
            target = _top(imported)
            if target not in RANK:
                problems.append(f"{where}: {imported} belongs to no layer; add it to LAYERS")
            elif RANK[target] > RANK[layer]:
                problems.append(f"{where}: {layer} (layer {RANK[layer]}) imports {imported} (layer {RANK[target]})")
    return problems


def test_every_package_module_has_a_layer() -> None:
    tops = {_top(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
            for p in PACKAGE.rglob("*.py")}
    assert tops <= set(RANK), f"modules with no layer: {sorted(tops - set(RANK))}"


def test_imports_point_one_way() -> None:
    assert _violations(_sources()) == []


def test_the_check_catches_an_upward_import() -> None:
    """The rule is live: a runtime module importing the HTTP layer is reported."""
    probe = PACKAGE / "runtime" / "_upward_import_probe.py"
    problems = _violations({probe: "from mlcomponent.http.app import create_app\nimport starlette\n"})
    assert any("_upward_import_probe.py:1: runtime (layer 6) imports mlcomponent.http.app" in p for p in problems)
    assert any("_upward_import_probe.py:2: runtime imports the web framework starlette" in p for p in problems)
