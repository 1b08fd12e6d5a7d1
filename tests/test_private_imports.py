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


def _private_attributes(path):
    """``module._name`` where ``module`` was bound by ``import <our module> [as module]``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                yield f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_another_modules_private_names(package):
    found = [hit for path in sorted((ROOT / package).rglob("*.py"))
             for hit in _private_imports(path)]
    assert found == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_reaches_into_another_modules_private_names(package):
    found = [hit for path in sorted((ROOT / package).rglob("*.py"))
             for hit in _private_attributes(path)]
    assert found == []


def test_the_checks_see_what_they_look_for(tmp_path, monkeypatch):
    """Both forms are found in a file written for the purpose."""
    monkeypatch.setitem(globals(), "ROOT", tmp_path)  # paths are shown relative to ROOT
    path = tmp_path / "sample.py"
    path.write_text("import pyro_mmt.estimator as est\nfrom pyro_mmt.data import _hidden\n"
                    "est._build\nest.__doc__\n", encoding="utf-8")
    assert len(list(_private_imports(path))) == 1
    assert [hit.split(": ")[1] for hit in _private_attributes(path)] == ["est._build"]
