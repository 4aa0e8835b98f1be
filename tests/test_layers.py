"""The package's layers: the CfC core -> the forecaster -> the applications, with no import in a circle.

Read from the source (``ast``), so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cfc_forecast"


def imported(path: Path) -> set[str]:
    """Every ``cfc_forecast`` / ``datamodules`` module ``path`` imports, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in ("cfc_forecast", "datamodules")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_only_the_core_and_the_error_types(path: Path) -> None:
    allowed = ("cfc_forecast.core", "cfc_forecast.errors")
    outside = sorted(n for n in imported(path) if not n.startswith(allowed) and n != "cfc_forecast")
    assert not outside, f"{path.name} imports {outside}: the core must not depend on the forecaster or the applications"


@pytest.mark.parametrize("path", sorted((PACKAGE / "forecaster").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_forecaster_imports_the_core_and_no_application(path: Path) -> None:
    # batch: the data's contract with the model; checkpoints: the one safe way to load a file (load_from_checkpoint)
    allowed = ("cfc_forecast.core", "cfc_forecast.forecaster", "cfc_forecast.errors", "cfc_forecast.batch",
               "cfc_forecast.checkpoints")  # fmt: skip
    outside = sorted(n for n in imported(path) if not n.startswith(allowed) and n != "cfc_forecast")
    assert not outside, f"{path.name} imports {outside}: the forecaster must not depend on the applications"


def test_no_module_of_the_package_imports_in_a_circle() -> None:
    """Module-level graph over every file of ``cfc_forecast`` and ``datamodules`` (a package counts as its
    ``__init__``); the only cycles allowed are a package with its own submodules (``pkg/__init__`` re-exporting)."""
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "datamodules").rglob("*.py")]
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imp in imported(path):
            while imp and imp not in modules:  # `from pkg.mod import Name` -> pkg.mod
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not imp.startswith(name + ".") and not name.startswith(imp + "."):
                targets.add(imp)
        graph[name] = targets

    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "imports in a circle: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_lightning_commands_know_nothing_of_the_dispatcher_or_the_tuner() -> None:
    names = imported(PACKAGE / "cli.py")
    assert not {n for n in names if n.startswith(("cfc_forecast.tune", "cfc_forecast.commands"))}
