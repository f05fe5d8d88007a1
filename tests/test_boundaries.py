"""Architecture rules: pure modules never import Prefect, flows never import torch, every package is shipped."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"coderflow": ROOT / "coderflow", "coderflow.flows": ROOT / "flows"}
PACKAGE_DIRS |= {"coderflow.tasks": ROOT / "tasks", "coderflow.storage": ROOT / "storage"}
THIN_TASK_MODULES = {"task.py", "runs.py"}  # the only modules under tasks/ allowed to import prefect


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_pure_modules_do_not_import_prefect():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in (ROOT / "tasks", ROOT / "storage", ROOT / "coderflow")
        for p in _py_files(folder)
        if p.name not in THIN_TASK_MODULES and "prefect" in _imports(p)
    ]
    assert offenders == []


def test_flows_do_not_import_torch():
    offenders = [str(p.relative_to(ROOT)) for p in _py_files(ROOT / "flows") if {"torch", "open_clip"} & _imports(p)]
    assert offenders == []


def test_every_module_starts_with_a_docstring():
    missing = []
    for folder in (*PACKAGE_DIRS.values(), ROOT / "tests"):
        for p in _py_files(folder):
            if not ast.get_docstring(ast.parse(p.read_text())):
                missing.append(str(p.relative_to(ROOT)))
    assert missing == []


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in PACKAGE_DIRS.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
