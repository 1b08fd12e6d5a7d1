"""No module of the library imports another module's private (underscore) names: a name used
across modules is public and documented where it is defined."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pyro_mmt", "models", "guides")


def _private_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        ours = node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
        if not ours:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                yield f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_another_modules_private_names(package):
    found = [hit for path in sorted((ROOT / package).rglob("*.py"))
             for hit in _private_imports(path)]
    assert found == []
