"""Import layering, read from the source with ``ast`` (nothing is imported): lower layers do not
reach up. Every import counts, at module level or inside a function, under TYPE_CHECKING or not."""

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
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
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


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    pkg = tmp_path / "medassist" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    from ..triage import run\n    import medassist.pacs.send\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "medassist")
    assert violations("medassist.models") == ["medassist.models.bad imports medassist.pacs.send",
                                              "medassist.models.bad imports medassist.triage",
                                              "medassist.models.bad imports medassist.triage.run"]
