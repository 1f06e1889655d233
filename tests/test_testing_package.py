"""engine/testing is shared with scripts that run without pytest, and is no part of the engine
proper: it must import no pytest, and no engine module may import it."""

from __future__ import annotations

import ast
from pathlib import Path

from engine.testing.cli import REPO


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by its full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def test_engine_testing_imports_no_pytest() -> None:
    files = sorted((REPO / "engine" / "testing").glob("*.py"))
    assert len(files) >= 5
    for path in files:
        found = {name for name in imported_modules(path) if name.split(".")[0] == "pytest"}
        assert not found, f"{path.name} imports {found}"


def test_no_engine_module_imports_engine_testing() -> None:
    testing = REPO / "engine" / "testing"
    engine_files = [p for p in (REPO / "engine").rglob("*.py") if testing not in p.parents]
    assert len(engine_files) > 30
    for path in engine_files:
        found = {n for n in imported_modules(path) if n.startswith("engine.testing")}
        assert not found, f"{path.relative_to(REPO)} imports {found}"
