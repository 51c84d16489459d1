"""Specification of the code's layout: the layers, the declared backend contract, and the maps.

The deployed package ``handlers/`` is layered in the order an event flows through it, read from
the bottom up: each layer may import only itself and the layers below it::

    entry -> follow -> launch -> route -> model -> backends -> core

(no import cycle, and no function-local import used to hide one: a local import is allowed where it
saves start-up time, with a comment saying so). No backend is named outside its own module(s) and
the registry; the published schemas list exactly what the code declares.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from handlers.backends import registry
from handlers.backends.contract import RunState
from handlers.launch.service import LaunchResult

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("entry", "follow", "launch", "route", "model", "backends", "core")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "handlers").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported handlers module, line, inside a function) for every import of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("handlers"):
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("handlers")]
        else:
            continue
        modules = _modules()
        for target in targets:
            if target in modules:
                found.append((target, node.lineno, id(node) in local))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_each_layer_imports_only_itself_and_the_layers_below_it():
    upward = []
    for module, path in _modules().items():
        for target, line, _ in _imports(path):
            mine, theirs = _layer(module), _layer(target)
            if mine and theirs and LAYERS.index(theirs) < LAYERS.index(mine):
                upward.append(f"{path.relative_to(ROOT)}:{line} {module} -> {target}")
    assert upward == []


def test_there_is_no_import_cycle_even_through_function_local_imports():
    graph = {m: {t for t, _, _ in _imports(p) if t != m} for m, p in _modules().items()}
    # a package's __init__ is imported with its modules: only real module edges count
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])
    assert cycles == []


def test_a_function_local_import_says_why_it_is_local():
    silent = []
    for path in _modules().values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for _, line, local in _imports(path):
            if not local:
                continue
            here, above = lines[line - 1], lines[line - 2] if line > 1 else ""
            if "#" not in here and not above.strip().startswith("#"):
                silent.append(f"{path.relative_to(ROOT)}:{line}")
    assert silent == []


def _code_strings_and_names(path: Path) -> list[tuple[int, str]]:
    """String constants (docstrings excluded) and identifiers of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
    return out


def test_no_backend_is_named_in_product_code_outside_its_own_modules_and_the_registry():
    names = set(registry.names())
    words = {re.sub(r"[^a-z]", "", n) for n in names} | names
    files = [ROOT / "main.py"] + [
        p for p in (ROOT / "handlers").rglob("*.py") if "backends" not in p.relative_to(ROOT).parts
    ]
    found = []
    for path in files:
        for line, text in _code_strings_and_names(path):
            for word in words:
                if re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", text.lower()):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}")
    assert found == []


def test_every_backend_module_declares_what_the_registry_says_it_does():
    for name in registry.names():
        spec = registry.spec(name)
        assert spec.name == name
        backend = spec.build()
        assert backend.spec is spec and backend.name == name
        assert backend.find_semantics == spec.find


def test_the_completion_schema_lists_exactly_the_registered_backends_and_terminal_states():
    schema = json.loads((ROOT / "handlers" / "schemas" / "run-completed.v1.json").read_text())
    props = schema["properties"]["data"]["properties"]
    assert props["backend"]["enum"] == list(registry.names())
    assert props["state"]["enum"] == [str(s) for s in RunState if s.terminal]


def test_the_api_contract_lists_the_launch_results_and_run_states_the_code_has():
    spec = yaml.safe_load((ROOT / "handlers" / "schemas" / "api.openapi.yaml").read_text())
    text = json.dumps(spec)
    assert json.dumps([str(r) for r in LaunchResult]) in text
    assert json.dumps([str(s) for s in RunState]) in text


def test_the_module_map_names_every_module_and_the_readme_every_package():
    doc = (ROOT / "handlers" / "__init__.py").read_text(encoding="utf-8")
    unnamed = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "handlers").rglob("*.py")
        if p.stem not in ("__init__", "__main__")
        and not (re.search(rf"\b{p.stem}\b", doc) and f"{p.parent.name}/" in doc)
    ]
    assert unnamed == []
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [layer for layer in LAYERS if f"handlers/{layer}/" not in readme] == []
