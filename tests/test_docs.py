"""The docs stay true: CI runs the README's test command, the README stays a short page, every `coderflow` command
and flag the docs show exists, every file, script and link they point to exists, and the shipped configs validate."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from coderflow.config import build_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "benchmarks" / "README.md"]
README_MAX_LINES = 220
# Folders of this repository: a backticked path that starts with one of them must exist.
REPO_FOLDERS = ("coderflow/", "flows/", "tasks/", "storage/", "deployments/", "tests/", "benchmarks/")
REPO_FOLDERS += ("scripts/", "docs/")
HISTORY = ROOT / "docs" / "benchmarks.md"  # names files and modules as they were in each benchmark round


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_command = ci_lines[-1] if ci_lines[-1] else ci_lines[-2]
    assert test_command.startswith("python -m pytest")
    assert f"\n{test_command}\n" in README.read_text()


def test_readme_is_a_short_page():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move details into docs/"


def test_docs_folder_has_the_pages_the_readme_links():
    assert {p.name for p in DOCS} >= {"datasets.md", "textbanks.md", "methods.md", "results.md", "operating.md"}
    readme = README.read_text()
    assert [p.name for p in DOCS if f"(docs/{p.name}" not in readme] == []


@pytest.mark.parametrize("path", sorted((ROOT / "deployments" / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_validate(path: Path):
    cfg = build_config(path)
    assert cfg.dataset.name and cfg.model.name


def test_docs_list_every_canned_question():
    names = [p.stem for p in sorted((ROOT / "storage" / "sql").glob("*.sql"))]
    readme, results = README.read_text(), (ROOT / "docs" / "results.md").read_text()
    assert [n for n in names if f"`{n}`" not in readme] == []
    assert [n for n in names if f"- `{n}`:" not in results] == []  # with its description


# --- commands -----------------------------------------------------------------------------------------------------


def _code(text: str) -> list[str]:
    """Every line of the fenced code blocks, and every inline code span, of a Markdown text."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            out.append(line)
        else:
            out.extend(re.findall(r"`([^`]+)`", line))
    return out


def _invocations(text: str) -> list[list[str]]:
    """The words of each `coderflow ...` command line in a Markdown text, up to a comment or a pipe."""
    found = []
    for snippet in _code(text):
        for m in re.finditer(r"(?:^\s*|[;&|(]\s*)coderflow\s+([^#|;&)]*)", snippet):
            try:
                words = shlex.split(m.group(1))
            except ValueError:  # an unbalanced quote in an inline excerpt
                words = m.group(1).split()
            found.append(words)
    return found


@cache
def _commands() -> dict[tuple[str, ...], object]:
    """Every command path of the CLI (`("texts", "import")`, ...), from the app itself."""
    import coderflow.cli

    app = coderflow.cli.app
    app = getattr(app, "app", app)  # the package's `app` may be its submodule app.py, which holds the App

    paths: dict[tuple[str, ...], object] = {(): app}

    def walk(node, prefix: tuple[str, ...]) -> None:
        for name in node:
            if name.startswith("-"):
                continue
            sub = node[name]
            if sub is node or (*prefix, name) in paths:
                continue
            paths[(*prefix, name)] = sub
            if len(prefix) < 2:
                walk(sub, (*prefix, name))

    walk(app, ())
    return paths


@cache
def _flags(path: tuple[str, ...]) -> frozenset[str]:
    """The flags `coderflow <path> --help` lists (every spelling, aliases included)."""
    from cli_runner import run_cli

    out = run_cli([*path, "--help"])
    assert out.exit_code == 0, out.output
    return frozenset(re.findall(r"(?<![\w-])(-[a-zA-Z]|--[\w][\w.-]*)", out.output))


def _command_path(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    path: tuple[str, ...] = ()
    rest = list(words)
    while rest and (*path, rest[0]) in _commands():
        path = (*path, rest.pop(0))
    return path, rest


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_coderflow_command_and_flag_in_the_docs_exists(page: Path):
    problems = []
    for words in _invocations(page.read_text()):
        if not words or words[0].startswith("<"):  # `coderflow <command> --help`: a placeholder
            continue
        path, rest = _command_path(words)
        if not path and not words[0].startswith("-"):
            problems.append(f"coderflow {' '.join(words)}: no command {words[0]!r}")
            continue
        flags = {w.split("=")[0].strip("[]") for w in rest if re.match(r"\[?--?[A-Za-z]", w)}
        unknown = sorted(f for f in flags if f not in _flags(path) and f not in ("--help", "-h", "--version"))
        if unknown:
            problems.append(f"coderflow {' '.join(words)}: {' '.join(path) or 'coderflow'} has no {unknown}")
    assert problems == []


# --- files, scripts and links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_script_the_docs_run_exists(page: Path):
    text = page.read_text()
    scripts = set(re.findall(r"(?:python\S*|bash)\s+((?:benchmarks|scripts)/[\w/.-]+\.(?:py|sh))", text))
    scripts |= {f"benchmarks/{s}" for s in re.findall(r"`((?:prototypes/)?\w+\.py)(?:\s[^`]*)?`", text)
                if page.parent.name == "benchmarks" and (ROOT / "benchmarks").joinpath(s).parent.exists()}  # fmt: skip
    assert sorted(s for s in scripts if not (ROOT / s).is_file()) == []


@pytest.mark.parametrize("page", [p for p in PAGES if p != HISTORY], ids=_rel)
def test_every_repository_path_the_docs_name_exists(page: Path):
    missing = []
    for span in re.findall(r"`([^`\s]+)`", page.read_text()):
        path = span.split(":")[0].rstrip(".,")
        if path.startswith(REPO_FOLDERS) and not re.search(r"[<>*{}]", path) and not (ROOT / path).exists():
            missing.append(path)
    assert missing == []


def test_benchmark_readme_cites_only_logs_that_exist():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    logs = set(re.findall(r"[\w.-]+\.log\b", text)) - {"round1_*.log"}
    assert logs, "benchmarks/README.md names the log of each figure"
    assert sorted(log for log in logs if not (ROOT / "benchmarks" / "results" / log).is_file()) == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_in_the_docs_resolves(page: Path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md":
            anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.*)$", dest.read_text(), re.M)}
            if anchor not in anchors:
                broken.append(target)
    assert broken == []
