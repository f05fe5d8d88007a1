"""The commands that read a work directory: runs, compare, report, ablate, query, doctor (no flow, no Prefect)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Optional

import pyarrow.csv as pacsv
from cyclopts import Parameter
from rich.markup import escape as markup_escape

from coderflow.cli.app import TableFormat, Workdir, app, console, err_console
from coderflow.console import print_rows, printable, printable_table
from coderflow.presets.benchmarks import BENCHMARKS, DEFAULT_BENCHMARK_BASE
from coderflow.storage.atomic import atomic_path
from coderflow.storage.db import QUERIES_DIR, canned_queries, check_workdir, csv_ready, query, sql_file
from coderflow.storage.doctor import diagnose, repair
from coderflow.storage.layout import Layout
from coderflow.tasks.evaluate.compare import BOOTSTRAP_RESAMPLES, against_clip, compare_runs
from coderflow.tasks.evaluate.reference import reference_warnings, run_against_reference

# The API (ablate), the report builder and storage.lock (filelock, for `doctor --fix`) load when their command runs:
# the start of every command stays quick.


def _ui_base() -> str | None:
    """The Prefect UI address from the environment (no Prefect import: `runs` answers in a second)."""
    ui = os.environ.get("PREFECT_UI_URL")
    api = os.environ.get("PREFECT_API_URL")
    return ui or (api.removesuffix("/").removesuffix("/api") if api else None)


@app.command(name="runs")
def runs_cmd(
    *,
    workdir: Workdir = None,
    dataset: Annotated[Optional[str], Parameter(help="only runs on this dataset")] = None,  # noqa: UP045
    model: Annotated[
        Optional[str],  # noqa: UP045
        Parameter(help="only runs of this model: its id (ViT-B-32__openai) or architecture (ViT-B-32)"),
    ] = None,
    flow: Annotated[
        Optional[str],  # noqa: UP045
        Parameter(help="only runs of this flow (pipeline, classify, few-shot, train-adapter, adapter-overlap)"),
    ] = None,
    fmt: TableFormat = "table",
) -> None:
    """One line per run: id, flow, dataset, model, text bank, start, seconds, status, zero-shot top-1 per method."""
    given = {"dataset": dataset or None, "flow": flow or None, "model": model or None}
    rows = query(Layout.at(workdir), sql_file("runs", QUERIES_DIR), params=given).to_pylist()
    base = _ui_base()
    for r in rows:
        r["flow_run"] = f"{base}/runs/flow-run/{r['flow_run_id']}" if base and r["flow_run_id"] else r["flow_run_id"]
        del r["flow_run_id"]
    if fmt == "json":
        console.print_json(json.dumps(rows, default=str), ensure_ascii=True)
    else:
        print_rows(rows, title=f"{len(rows)} runs")


@app.command(name="compare")
def compare_cmd(
    run_a: Annotated[str, Parameter(help="a run id")],
    run_b: Annotated[Optional[str], Parameter(help="another run id (default: run A again)")] = None,  # noqa: UP045
    /,
    *,
    methods: Annotated[
        Optional[str],  # noqa: UP045
        Parameter(
            help="A,B: method A of run A against method B of run B (default: each method against clip in one "
            "run, or each method against itself across two runs)"
        ),
    ] = None,
    per_class: Annotated[bool, Parameter(negative="", help="also one row per class")] = False,
    resamples: Annotated[int, Parameter(help="bootstrap resamples of the 95% interval")] = BOOTSTRAP_RESAMPLES,
    seed: Annotated[int, Parameter(help="bootstrap seed")] = 0,
    workdir: Workdir = None,
    fmt: TableFormat = "table",
) -> None:
    """Paired comparison on the samples both classified: accuracy difference (A - B), bootstrap 95% interval, exact
    McNemar p-value."""
    layout = Layout.at(workdir)
    run_b = run_b or run_a
    found = query(layout, sql_file("run_methods", QUERIES_DIR), params=[run_a, run_b]).to_pylist()
    present = {r["run_id"]: r["methods"] for r in found}
    for run in (run_a, run_b):
        if run not in present:
            raise ValueError(f"run {run!r} has no predictions in {layout.root}: see `coderflow runs`")
    if methods:
        pair = [m.strip() for m in methods.split(",")]
        if len(pair) != 2:
            raise ValueError(f"--methods {methods!r}: give two methods, A,B")
        a_methods, b_methods = [pair[0]], [pair[1]]
    elif run_b == run_a:
        a_methods, b_methods = against_clip(present[run_a])
        if not a_methods:
            raise ValueError(f"run {run_a} has no clip and other methods to compare: pass --methods A,B or RUN_B")
    else:
        a_methods = b_methods = [m for m in present[run_a] if m in present[run_b]]
    for run, ms in ((run_a, a_methods), (run_b, b_methods)):
        missing = sorted(set(ms) - set(present[run]))
        if missing:
            raise ValueError(f"run {run} has no method {missing}: it has {', '.join(present[run])}")
    notes: list[str] = []
    rows = compare_runs(layout, run_a, a_methods, run_b, b_methods, resamples, seed, per_class, notes)
    for note in notes:  # a partial overlap of two runs' images: said, on stderr (JSON stays parseable)
        err_console.print(f"[bold]note:[/] {markup_escape(printable(note))}", highlight=False, soft_wrap=True)
    if fmt == "json":
        console.print_json(json.dumps(rows))
        return
    columns = ["method_a", "method_b", "shots", "class_index", "n", "accuracy_a", "accuracy_b", "difference",
               "ci_low", "ci_high", "p_value"]  # fmt: skip
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    title = f"{run_a} vs {run_b}" if run_b != run_a else f"run {run_a}"
    print_rows(rows, title=f"{title}: difference = A - B, 95% bootstrap interval, exact McNemar p", columns=shown)
    _print_references(layout, dict.fromkeys([run_a, run_b]))


def _print_references(layout: Layout, run_ids: Sequence[str]) -> None:
    """Each run's accuracies against published numbers for its dataset, backbone and weights; far-off baselines
    warned on stderr."""
    for run_id in run_ids:
        key, rows = run_against_reference(layout, run_id)
        if rows:
            columns = ["method", "shots", "metric", "value", "reference", "difference", "source"]
            print_rows(
                rows, title=f"run {run_id} against published numbers ({', '.join(map(str, key))})", columns=columns
            )
        for warning in reference_warnings(rows, key):
            err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command(name="report")
def report_cmd(
    run_id: Annotated[str, Parameter(help="a run id (see `coderflow runs`)")],
    /,
    *,
    fmt: Annotated[
        Literal["md", "html", "latex", "csv"],
        Parameter(name="--format", help="md (figures as files beside it), html (one file), latex or csv (the table)"),
    ] = "md",
    output: Annotated[
        Optional[Path],  # noqa: UP045
        Parameter(
            name=["--output", "-o"],
            allow_leading_hyphen=True,
            help="the file to write (default report-RUN.md|html|tex|csv; - for stdout, Markdown figures as data URLs)",
        ),
    ] = None,
    resamples: Annotated[
        int, Parameter(help="bootstrap resamples of the intervals against clip")
    ] = BOOTSTRAP_RESAMPLES,
    workdir: Workdir = None,
) -> None:
    """A self-contained report of a run to share: configuration, metrics against clip with 95% intervals, reference
    numbers, per-class recall, most confused classes, calibration, accuracy against shots."""
    from coderflow.tasks.report.document import build_report

    to_stdout = str(output) == "-"
    path = output or Path(f"report-{run_id}.{'tex' if fmt == 'latex' else fmt}")
    figures = None if to_stdout else f"{path.stem}_files"  # Markdown figures as files: sites render no data URLs
    report = build_report(Layout.at(workdir), run_id, fmt, resamples, figures)
    if to_stdout:
        sys.stdout.write(printable(report.text))
    else:
        for name, data in report.files.items():
            (path.parent / name).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path.parent / name) as tmp:
                Path(tmp).write_bytes(data)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(report.text, encoding="utf-8")
        extra = f" (figures in {path.parent / figures})" if report.files else ""
        console.print(f"report of run {run_id}: {path}{extra}", highlight=False)
    for warning in map(printable, report.warnings):
        err_console.print(f"[bold yellow]warning:[/] {markup_escape(warning)}", highlight=False, soft_wrap=True)


def suite_report_cmd(
    suite_id: Annotated[str, Parameter(help="a suite id (see `coderflow suites`)")],
    /,
    *,
    fmt: Annotated[
        Literal["md", "html", "csv"],
        Parameter(name="--format", help="md, html (one file) or csv (benchmark.csv's rows)"),
    ] = "md",
    output: Annotated[
        Optional[Path],  # noqa: UP045
        Parameter(name=["--output", "-o"], allow_leading_hyphen=True, help="the file to write (default: stdout)"),
    ] = None,
    workdir: Workdir = None,
) -> None:
    """A suite's results in the papers' layout (per shots, methods as rows, datasets as columns and their average;
    mean +- std over seeds, * where the difference from clip is significant, published numbers beside), failed cells
    and studies; --format csv: benchmark.csv. Registered as `coderflow suite report` (cli/suite_commands.py)."""
    from coderflow.tasks.suite.report import build_suite_report

    text = build_suite_report(Layout.at(workdir), suite_id, fmt)
    if output is None or str(output) == "-":
        sys.stdout.write(printable(text))
        return
    with atomic_path(output) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    console.print(f"report of suite {printable(suite_id)}: {output}", highlight=False)


@app.command(name="ablate")
def ablate_cmd(
    run_id: Annotated[str, Parameter(help="a zero-shot run id (see `coderflow runs`)")],
    /,
    *,
    workdir: Workdir = None,
    fmt: TableFormat = "table",
) -> None:
    """The CODER paper's text-type ablation of a run's bank: P, P+Att, P+Att+Ana, P+Att+Ana+Syno, then CODER*
    with one-vs-one texts; re-scored from the stored embeddings, nothing written."""
    from coderflow.api import load_run

    rows = load_run(run_id, workdir).ablate()
    if fmt == "json":
        console.print_json(json.dumps(rows))
    else:
        print_rows(rows, title=f"run {run_id}: text-type ablation (top-1; gain over the previous step)")


@app.command(name="query")
def query_cmd(
    sql: Annotated[Optional[str], Parameter(help="SQL (read-only) over the views")] = None,  # noqa: UP045
    /,
    *,
    file: Annotated[Optional[Path], Parameter(name=["--file", "-f"], help="read the SQL from a file")] = None,  # noqa: UP045
    canned: Annotated[Optional[str], Parameter(help="a bundled question (see --list)")] = None,  # noqa: UP045
    list_: Annotated[bool, Parameter(name="--list", negative="", help="list the bundled questions")] = False,
    workdir: Workdir = None,
    fmt: Annotated[Literal["table", "csv", "json"], Parameter(name="--format")] = "table",
    timeout: Annotated[float, Parameter(help="stop a query running longer than this many seconds")] = 300.0,
) -> None:
    """Answer read-only SQL over the views (texts, predictions, metrics, runs, classes, coder_cosines, reference_results, ...)."""
    if list_:
        print_rows([{"name": k, "question": v} for k, v in canned_queries().items()], title="coderflow query --canned")
        return
    given = [x for x in (sql, file, canned) if x]
    if len(given) != 1:
        raise ValueError("give exactly one of: SQL as an argument, --file x.sql, --canned NAME (or --list)")
    if file is not None and not file.is_file():
        raise ValueError(f"SQL file {str(file)!r} not found: pass the path of a .sql file")
    if canned is not None and canned not in canned_queries():
        raise ValueError(f"--canned {canned!r}: no such question; choose from {', '.join(canned_queries())}")
    text = sql or (file.read_text() if file else sql_file(str(canned)))
    table = query(Layout.at(workdir), text, timeout=timeout if timeout > 0 else None)
    if fmt == "csv":
        pacsv.write_csv(printable_table(csv_ready(table)), sys.stdout.buffer)
    elif fmt == "json":  # ensure_ascii: a control character in a value is written as \u001b, never raw
        console.print_json(json.dumps(table.to_pylist(), default=str), ensure_ascii=True)
    else:
        print_rows(table.to_pylist(), columns=table.column_names)


@app.command(name="doctor")
def doctor_cmd(
    *,
    workdir: Workdir = None,
    fix: Annotated[bool, Parameter(negative="", help="repair what can be recomputed")] = False,
) -> int:
    """Check a work directory (markers, stored files against their hashes, views, temp files, runs left running):
    one line per problem; --fix repairs what it can and never deletes a result it cannot recompute. Exit code 1
    while problems remain."""
    layout = Layout.at(workdir)
    check_workdir(layout)
    findings, checked = diagnose(layout)
    fixed = []
    if fix and findings:
        from coderflow.storage.lock import workdir_lock

        with workdir_lock(layout.root, "coderflow doctor --fix"):
            findings, checked = diagnose(layout)  # again, under the lock: a run may have finished meanwhile
            fixed = repair(layout, findings)
    for f in findings:
        print(printable(("fixed " if f in fixed else "") + f.line(layout.root)))
    left = len(findings) - len(fixed)
    print(f"{layout.root}: {checked} stored files checked, {len(findings)} problems, {len(fixed)} fixed, {left} left")
    return 1 if left else 0


@app.command(name="datasets")
def datasets_cmd(*, fmt: TableFormat = "table") -> None:
    """The CLIP_benchmark datasets `--benchmark NAME` reads by name: one line each with its splits, number of classes
    and the preset that applies to it."""
    rows = [b.row() for b in BENCHMARKS.values()]
    if fmt == "json":
        console.print_json(json.dumps(rows))
        return
    print_rows(
        rows,
        title=f"{len(rows)} datasets for `coderflow run --benchmark NAME` (vtab/ may be left out), read from "
        f"<base>/wds_<NAME with / as -> (base: --dataset.benchmark-base, default {DEFAULT_BENCHMARK_BASE})",
    )
