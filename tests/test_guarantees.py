"""The README's "Guarantees" section names the tests that hold each promise: every one of them exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_test_the_guarantees_name_exists():
    section = _section((ROOT / "README.md").read_text(), "Guarantees")
    promises = [p for p in section.split("\n- ")[1:]]
    assert len(promises) >= 10
    for promise in promises:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", promise)
        assert named, f"a promise without a test: {promise[:80]!r}"
        for file, name in named:
            assert (ROOT / file).is_file(), file
            assert name in _tests_in(ROOT / file), f"{file}::{name} is named in the README but does not exist"
