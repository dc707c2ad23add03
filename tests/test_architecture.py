"""The import rule of docs/architecture.md, checked over the source (ast, no imports run).

Layers, lowest first; a module may import its own package and the layers below it, never a
sibling in its own layer (``http`` and ``grpc`` are siblings: neither imports the other):

    errors, logs, options, timers, yamlsafe → __init__ → manifest → settings, kubernetes → spec → protocol → boxes
    → runtime → metrics → serving → http, grpc (transports) → process → client
    → scaffold, cli_output, ship → cli_ship → cli → __main__

``kubernetes`` sits beside ``settings``: it reads manifests and never touches the
runtime or a transport. Web frameworks are the transports' business only. Relative
imports are resolved and checked like absolute ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGE = ROOT / "mlcomponent"
LAYERS = [
    {"errors", "garbage", "logs", "options", "timers", "yamlsafe"},
    {"__init__"},
    {"manifest"},
    {"settings", "kubernetes"},
    {"spec"},
    {"protocol"},
    {"boxes"},
    {"runtime"},
    {"metrics"},
    {"serving"},
    {"http", "grpc"},
    {"process"},
    {"client"},
    {"scaffold", "cli_output", "ship"},
    {"cli_ship"},
    {"cli"},
    {"__main__"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
WEB_FRAMEWORKS = {"starlette", "uvicorn", "fastapi", "grpc"}
TRANSPORTS = {"http", "grpc", "process", "cli", "__main__"}


def _top(module: str) -> str:
    """``mlcomponent.runtime.files`` → ``runtime``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """What ``from ... import`` names, relative imports resolved against ``module``."""
    if node.level == 0:
        return [node.module] if node.module else []
    parts = module.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    if node.module:
        return [".".join([*base, node.module])]
    return [".".join([*base, alias.name]) for alias in node.names]


def _imports(source: str, module: str = "mlcomponent.x", is_package: bool = False) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, name) for name in _absolute(node, module, is_package)]
    return found


def _sources() -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))}


def _violations(sources: dict[Path, str]) -> list[str]:
    problems = []
    for path, source in sources.items():
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = dotted.removesuffix(".__init__")
        layer = _top(module)
        for line, imported in _imports(source, module, path.name == "__init__.py"):
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
            elif RANK[target] == RANK[layer] and target != layer:
                problems.append(f"{where}: {layer} imports its sibling {imported} (both layer {RANK[layer]}); "
                                "move what both need to a layer below them")
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
    assert any("_upward_import_probe.py:1: runtime (layer 7) imports mlcomponent.http.app" in p for p in problems)
    assert any("_upward_import_probe.py:2: runtime imports the web framework starlette" in p for p in problems)


def test_the_check_catches_a_sibling_import() -> None:
    """A transport importing the other transport is reported (what both need belongs in ``serving/``)."""
    probe = PACKAGE / "grpc" / "_sibling_import_probe.py"
    problems = _violations({probe: "import grpc\nfrom mlcomponent.http.responses import error_payload\n"})
    assert problems == ["mlcomponent/grpc/_sibling_import_probe.py:2: grpc imports its sibling "
                        "mlcomponent.http.responses (both layer 10); move what both need to a layer below them"]


def test_the_check_resolves_relative_imports() -> None:
    """``from ..http import x`` is the same import as ``from mlcomponent.http import x``."""
    probe = PACKAGE / "grpc" / "_relative_import_probe.py"
    problems = _violations({probe: "from ..http.responses import error_payload\nfrom . import codec\n"
                                   "from .. import process\n"})
    assert any(p.startswith("mlcomponent/grpc/_relative_import_probe.py:1: grpc imports its sibling "
                            "mlcomponent.http.responses") for p in problems)
    assert any("_relative_import_probe.py:3: grpc (layer 10) imports mlcomponent.process (layer 11)" in p
               for p in problems)
    assert not any(":2:" in p for p in problems)  # its own package is fine
    package = PACKAGE / "serving" / "__init__.py"
    assert _violations({package: "from .auth import Auth\nfrom ..http import app\n"}) == [
        "mlcomponent/serving/__init__.py:2: serving (layer 9) imports mlcomponent.http (layer 10)"]
