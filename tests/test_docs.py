"""The README and the shipped config files stay true: CI runs the README's test command; configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from coderflow.config import build_config

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_command = ci_lines[-1] if ci_lines[-1] else ci_lines[-2]
    assert test_command.startswith("python -m pytest")
    assert f"\n{test_command}\n" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "deployments" / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_validate(path: Path):
    cfg = build_config(path)
    assert cfg.dataset.name and cfg.model.name


def test_readme_lists_every_canned_question():
    readme = (ROOT / "README.md").read_text()
    missing = [p.stem for p in sorted((ROOT / "storage" / "sql").glob("*.sql")) if f"`{p.stem}`" not in readme]
    assert missing == []
