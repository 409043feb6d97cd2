"""The suite's own layout: shared helpers live in tests/support/ and fixtures in the conftest.py files, so no test
module imports another test module (or a conftest)."""

from __future__ import annotations

import ast

from tests.support.paths import ROOT

TESTS = ROOT / "tests"


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from tests.unit import test_x
    return names


def test_no_test_module_imports_another_or_a_conftest():
    modules = sorted(TESTS.rglob("test_*.py"))
    assert len(modules) > 50  # the walk found the suite
    offending = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imported_modules(path)
            if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith(("test_", "conftest"))
        )
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}
