"""The suite flow: every cell of a suite file as a `pipeline` or `few-shot` sub-flow, one SUITE_CELLS record each.

A cell whose stored run has the config and inputs it has now is answered from that run ('reused'); a failing cell is
recorded with its error and the others go on; a suite run again after it was killed computes only the cells without
an up-to-date run. Cells run in the order of `coderflow.suite_config.expand` (the cells of one dataset and model
together), so what they share (a dataset's image embeddings, a bank's text embeddings) is computed once.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml
from prefect import flow, get_run_logger

from coderflow.config import PipelineConfig
from coderflow.flows.bookkeeping import flow_run_id, resolved_workdir
from coderflow.flows.fewshot import fewshot
from coderflow.flows.pipeline import import_texts, ingest_dataset, pipeline
from coderflow.flows.runners import subflows_share_heartbeat, with_runner
from coderflow.flows.suite_inputs import (
    cell_splits,
    fewshot_run,
    record_fewshot_inputs,
    zeroshot_run,
)
from coderflow.storage.atomic import write_text
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_rows
from coderflow.storage.runs import new_run_id
from coderflow.storage.schemas import SUITE_CELLS
from coderflow.suite_config import Cell, SuiteFile, expand, validate_suite
from coderflow.tasks.classify.zeroshot import OWN_BANKS
from coderflow.tasks.runs import refresh_database

DONE = ("completed", "reused")
TABLE_COLUMNS = ("dataset", "model", "bank", "kind", "axis", "status", "run_id", "seconds", "error")


@dataclass(frozen=True)
class SuiteResult:
    """A suite run: its id and one row per cell (SUITE_CELLS columns)."""

    suite_id: str
    cells: list[dict[str, Any]] = field(default_factory=list)
    flow_run_id: str | None = None

    def count(self, *statuses: str) -> int:
        return sum(c["status"] in statuses for c in self.cells)


def _suite_name() -> str:
    from prefect.runtime import flow_run

    spec = flow_run.parameters.get("spec")
    suite = spec.suite if isinstance(spec, SuiteFile) else (spec or {}).get("suite") or {}
    return f"suite {suite.name if hasattr(suite, 'name') else suite.get('name')}"


@flow(name="suite", flow_run_name=_suite_name)
@subflows_share_heartbeat
def suite(spec: SuiteFile, suite_id: str | None = None) -> SuiteResult:
    """Run every cell of a suite (datasets x models x banks zero-shot, and few-shot): stored runs answer the cells
    that are up to date; progress and the cells' table show in the UI."""
    from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

    file = spec if isinstance(spec, SuiteFile) else validate_suite(spec)
    cells = expand(file)
    workdir = resolved_workdir(cells[0].config.workdir)
    suite_id = suite_id or new_run_id(file.suite.name)
    layout = Layout.at(workdir)
    write_text(yaml.safe_dump(file.model_dump(mode="json"), sort_keys=False), layout.suite_file(suite_id, "suite.yaml"))
    plan = {"suite_id": suite_id, "name": file.suite.name, "cells": [c.row() for c in cells]}
    write_text(json.dumps(plan, indent=2), layout.suite_file(suite_id, "plan.json"))
    log = get_run_logger()
    log.info("suite %s (%s): %d cells", suite_id, file.suite.name, len(cells))
    progress = create_progress_artifact(
        0.0, key="suite-progress", description=f"suite {suite_id}: cells done of {len(cells)}"
    )
    rows = []
    for i, cell in enumerate(cells):
        rows.append(run_cell(cell, suite_id, file.suite.name, workdir, log))
        update_progress_artifact(progress, 100.0 * (i + 1) / len(cells))
    table = [{k: r[k] for k in TABLE_COLUMNS} for r in rows]
    done, failed = sum(r["status"] in DONE for r in rows), sum(r["status"] == "failed" for r in rows)
    create_table_artifact(
        table, key="suite-cells", description=f"suite {suite_id}: {done} of {len(rows)} cells done, {failed} failed"
    )
    refresh_database(workdir)
    from coderflow.tasks.suite.stats import suite_finished  # the suite's statistics and benchmark.csv

    try:
        suite_finished(suite_id, workdir)
        watch_regressions(suite_id, workdir)
    except Exception as exc:  # the cells' records stand; the statistics can be computed again from them
        log.warning("the statistics of suite %s failed: %s", suite_id, " ".join(str(exc).split()))
    return SuiteResult(suite_id, rows, flow_run_id())


def watch_regressions(suite_id: str, workdir: str) -> list[dict[str, Any]]:
    """The cells that got worse than in the previous run of the same suite by more than their 95% interval
    (tasks/suite/watch.py): a warning and the `suite-regressions` artifact naming them."""
    from prefect.artifacts import create_markdown_artifact

    from coderflow.tasks.report.tables import markdown_table
    from coderflow.tasks.suite.watch import suite_regressions

    previous, worse = suite_regressions(Layout.at(workdir), suite_id)
    if not worse:
        return []
    columns = ("dataset", "model_id", "textbank_id", "method", "shots", "before", "now", "drop", "interval")
    head = (
        f"{len(worse)} results of suite run {suite_id} fell below suite run {previous} by more than their 95% interval:"
    )
    create_markdown_artifact(
        f"{head}\n\n{markdown_table(worse, columns)}",
        key="suite-regressions",
        description=f"suite {suite_id}: got worse",
    )
    get_run_logger().warning(
        "suite %s: %d results fell below suite run %s by more than their 95%% interval (artifact suite-regressions)",
        suite_id, len(worse), previous,
    )  # fmt: skip
    return worse


def run_cell(cell: Cell, suite_id: str, suite_name: str, workdir: str, log: Any = None) -> dict[str, Any]:
    """Answer one cell: from its up-to-date stored run, else by running its flow; the record is written either way
    (an error is recorded, not raised; an interruption leaves the cell without a record)."""
    log = log or logging.getLogger(__name__)
    started, t0 = datetime.now(UTC), time.perf_counter()
    row: dict[str, Any] = {"suite_id": suite_id, "suite_name": suite_name, **cell.row(), "model_id": None,
                           "textbank_id": None, "run_id": None, "status": "failed", "error": None}  # fmt: skip
    try:
        cfg = cell.config.model_copy(update={"workdir": workdir})
        cfg, imported = _with_imported_bank(cell, cfg)
        run_id = zeroshot_run(cfg) if cell.kind == "zeroshot" else fewshot_run(cfg)
        row["status"] = "reused" if run_id else "completed"
        if run_id is None:
            run_id = _run(cell.kind, cfg)
        row["run_id"] = run_id
        manifest = json.loads(Layout.at(workdir).run_file(run_id, "manifest.json").read_text())
        row["model_id"], row["textbank_id"] = manifest.get("model_id"), imported or manifest.get("textbank_id")
        log.info("cell %s %s x %s x %s: %s by run %s", cell.kind, cell.dataset, cell.model, cell.bank,
                 row["status"], run_id)  # fmt: skip
    except Exception as exc:
        row["status"], row["error"] = "failed", " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
        log.warning("cell %s %s x %s x %s failed: %s", cell.kind, cell.dataset, cell.model, cell.bank, row["error"])
    finished = datetime.now(UTC)
    row |= {"seconds": round(time.perf_counter() - t0, 3), "started_at": started, "finished_at": finished}
    write_rows([row], SUITE_CELLS, Layout.at(workdir).suite_cell_file(suite_id, cell.cell_id))
    return row


def _with_imported_bank(cell: Cell, cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """An imported bank is imported for the cell's dataset and model (the import-texts flow), and its methods score
    on it (classify.banks); other cells return as they are."""
    bank = cell.imported
    if bank is None:
        return cfg, None
    ingest_dataset(cfg.dataset, cfg.workdir)  # the import matches the file's entries to the dataset's classes
    out = import_texts(cfg.dataset, cfg.model, str(bank.file), str(bank.format), cfg.texts, cfg.workdir, bank.key)
    methods = bank.methods or tuple(m for m in cfg.methods if m not in OWN_BANKS)
    banks = {**(cfg.classify.banks or {}), **dict.fromkeys(methods, out.textbank_id)}
    return cfg.model_copy(update={"classify": cfg.classify.model_copy(update={"banks": banks})}), out.textbank_id


def _run(kind: str, cfg: PipelineConfig) -> str:
    """Run the cell's flow as a sub-flow after the checks `coderflow run` / `fewshot` make; returns its run id."""
    from coderflow.preflight import preflight

    shots = cfg.fewshot.shots if kind == "fewshot" else ()
    preflight(cfg, ingests=cell_splits(cfg, kind), embeds=True, shots=shots)
    if kind == "zeroshot":
        return with_runner(pipeline, cfg)(cfg).run_id
    run_id = with_runner(fewshot, cfg)(cfg).run_id
    record_fewshot_inputs(run_id, cfg)  # a later suite run answers this cell from this run
    return run_id
