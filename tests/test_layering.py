"""Import layering, read from the source with ``ast`` (nothing is imported): lower layers do not
reach up. Every import counts, at module level or inside a function, under TYPE_CHECKING or not.

Also no import cycles among medassist modules: that check reads module-level imports only
(function-level lazy imports, and those under ``if TYPE_CHECKING:``, are excluded; a few lazy
imports still go both ways, e.g. models.export and models.onnx_runtime)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medassist"

# layer -> the packages it must not import
FORBIDDEN = {
    "medassist.families": ("medassist.triage", "medassist.audit", "medassist.explain", "medassist.review",
                           "medassist.pacs"),
    "medassist.models": ("medassist.triage", "medassist.review", "medassist.pacs", "medassist.audit"),
    "medassist.preprocess": ("medassist.families", "medassist.triage", "medassist.audit", "medassist.explain",
                             "medassist.review", "medassist.pacs"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def from_module(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` statement names, a relative one resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (relative ones resolved;
    ``from pkg import name`` also counts ``pkg.name``, which may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, package)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(layer: str) -> list[str]:
    files = sorted((PACKAGE.parent / layer.replace(".", "/")).rglob("*.py"))
    assert files, f"no modules under {layer}"
    return sorted(
        f"{module_name(path)} imports {imported}"
        for path in files
        for imported in imported_modules(path)
        if any(within(imported, banned) for banned in FORBIDDEN[layer])
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer):
    assert violations(layer) == []


def test_metrics_sit_at_the_bottom():
    """``medassist.metrics`` is used by models, explain, audit, monitor and adapt; it imports nothing
    from medassist but the errors."""
    path = PACKAGE / "metrics.py"
    reached = sorted(m for m in imported_modules(path) if within(m, "medassist") and m != "medassist")
    assert [m for m in reached if not within(m, "medassist.errors")] == []


# inference module -> the training modules it must not import (training builds on inference, not back)
INFERENCE_APART = {
    "medassist.models.tumor": ("medassist.models.tumor_train", "medassist.models.train",
                               "medassist.models.train_common", "medassist.models.augment"),
}


@pytest.mark.parametrize("module", sorted(INFERENCE_APART))
def test_inference_does_not_import_training(module):
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    assert sorted(m for m in imported_modules(path) if any(within(m, t) for t in INFERENCE_APART[module])) == []


# model card: statistics -> card dict -> layout (typed blocks) -> renderers; none reaches up
CARD_APART = {
    "medassist.audit.card_analysis": ("medassist.audit.card", "medassist.audit.card_layout",
                                      "medassist.audit.card_render"),
    "medassist.audit.card": ("medassist.audit.card_layout", "medassist.audit.card_render"),
    "medassist.audit.card_layout": ("medassist.audit.card_render",),
}


@pytest.mark.parametrize("module", sorted(CARD_APART))
def test_card_layers_do_not_reach_up(module):
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    assert sorted(m for m in imported_modules(path) if any(within(m, t) for t in CARD_APART[module])) == []


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    pkg = tmp_path / "medassist" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    from ..triage import run\n    import medassist.pacs.send\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "medassist")
    assert violations("medassist.models") == ["medassist.models.bad imports medassist.pacs.send",
                                              "medassist.models.bad imports medassist.triage",
                                              "medassist.models.bad imports medassist.triage.run"]


# --- no import cycles ---------------------------------------------------------------------------------


def module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The medassist modules a file imports when it is imported: statements at module level, also
    inside a module-level ``if`` or ``try``, but not under ``if TYPE_CHECKING:`` and not inside a
    function or class body (those are lazy imports, run later, and are excluded on purpose).
    ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``; a module's own
    parent packages are not counted (Python initialises them first in any case)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.If):
                test = node.test
                if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = from_module(node, package)
                for alias in node.names:
                    found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)

    visit(tree.body)
    return {m for m in found if m in modules and m != name and not within(name, m)}


def import_cycles() -> list[list[str]]:
    """The strongly connected components (more than one module) of the module-level import graph."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: module_level_imports(path, set(paths)) for name, path in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(cycles)


def test_no_import_cycles_at_module_level():
    assert import_cycles() == []


def test_the_cycle_finder_sees_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "medassist" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "medassist" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from medassist.models import b\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("import medassist.models.a\n")
    (pkg / "lazy.py").write_text("def f():\n    from medassist.models import a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medassist.models import lazy\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "medassist")
    assert import_cycles() == [["medassist.models.a", "medassist.models.b", "medassist.models.c"]]
