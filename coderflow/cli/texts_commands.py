"""`coderflow texts`: generate a dataset's text bank, import a published text file as one, or export one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

from cyclopts import App, Parameter

from coderflow.cli.app import Format, Options, Workdir, command, console, load_config
from coderflow.config import PipelineConfig
from coderflow.console import bank_summary_table
from coderflow.preflight import preflight
from coderflow.storage.atomic import write_text
from coderflow.storage.db import QUERIES_DIR, query, sql_file
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table

# The flows import Prefect and torch: each command imports its flow (and the exporter its formats) when it runs, so
# `--help` answers quickly.

texts_app = App(name="texts", help="Text banks: generate one (no sub-command), import a published file, or export.")


@command("texts", parent=texts_app, default=True)
def texts(*, options: Options = None) -> None:
    """Generate the dataset's text bank (offline or with an LLM) and embed its new texts."""
    cfg = preflight(load_config(options), needs=[None], embeds=True)
    from coderflow.flows.pipeline import text_bank

    templates = list(cfg.templates) if cfg.templates else None
    out = text_bank(cfg.dataset, cfg.model, cfg.texts, cfg.workdir, templates, cfg.classify)
    console.print(f"text bank {out.textbank_id}: {out.n_texts} texts, {out.embedded} newly embedded")
    if out.summary:
        with_cost = cfg.texts.llm.price_per_1k is not None
        console.print(bank_summary_table(out.summary, f"text bank {out.textbank_id}", with_cost))


@command("texts import", parent=texts_app)
def texts_import(
    file: Annotated[Path, Parameter(help="JSON file: DCLIP/WaffleCLIP descriptors, CuPL prompts, CLIP_benchmark")],
    /,
    *,
    fmt: Format,
    key: Annotated[Optional[str], Parameter(help="clip-benchmark: the file's dataset entry")] = None,  # noqa: UP045
    options: Options = None,
) -> None:
    """Import a published text file as a text bank of an ingested dataset (descriptors become `att` rows)."""
    if not file.is_file():
        raise ValueError(f"text file {str(file)!r} not found: pass a JSON file")
    cfg = preflight(load_config(options), needs=[None], embeds=True)
    from coderflow.flows.pipeline import import_texts

    out = import_texts(cfg.dataset, cfg.model, str(file), fmt, cfg.texts, cfg.workdir, key)
    console.print(f"text bank {out.textbank_id}: {out.n_texts} texts from {file}")
    for what in ("unmatched_classes", "unmatched_keys"):
        if out.report.get(what):
            console.print(
                f"{what.replace('_', ' ')} ({len(out.report[what])}): {out.report[what][:10]}", style="yellow"
            )
    method = {"dclip": "dclip", "cupl": "cupl", "clip-benchmark": "clip"}[fmt]
    console.print(f"use it with: coderflow classify --classify.banks {method}={out.textbank_id}")


@texts_app.command(name="export")
def texts_export(
    textbank: Annotated[str, Parameter(help="text bank id")],
    /,
    *,
    fmt: Format,
    output: Annotated[Path, Parameter(name=["--output", "-o"], help="JSON file to write")],
    key: Annotated[
        Optional[str],  # noqa: UP045
        Parameter(help="clip-benchmark: the dataset key (default: the dataset whose runs or texts used the bank)"),
    ] = None,
    workdir: Workdir = None,
) -> None:
    """Write a text bank in a published format (dclip / cupl: class -> texts; clip-benchmark: dataset -> templates)."""
    from coderflow.tasks.texts.imports import export_bank

    layout = Layout.at(workdir)
    path = layout.textbank_file(textbank)
    if not path.is_file():
        raise ValueError(
            f"no text bank {textbank!r} in {layout.root}: list them with "
            '`coderflow query "SELECT DISTINCT textbank_id FROM texts"`'
        )
    if fmt == "clip-benchmark" and not key:
        key = _bank_dataset(layout, textbank)
    data = export_bank(read_table(path).to_pylist(), fmt, key)  # type: ignore[arg-type]
    write_text(json.dumps(data, indent=2, ensure_ascii=False), output)
    console.print(f"{sum(map(len, data.values()))} texts of {len(data)} entries written to {output}")


def _bank_dataset(layout: Layout, textbank: str) -> str | None:
    """The dataset a text bank was made or used for: the newest run's with it, else the dataset it is the newest
    bank of (texts/latest-<dataset>.txt)."""
    if (layout.root / "runs").exists():
        rows = query(layout, sql_file("bank_dataset", QUERIES_DIR), params=[textbank]).to_pylist()
        if rows and rows[0]["dataset"]:
            return rows[0]["dataset"]
    for alias in sorted((layout.root / "texts").glob("latest-*.txt")):
        if alias.read_text().strip() == textbank:
            return alias.name.removeprefix("latest-").removesuffix(".txt")
    return None


def newest_bank(cfg: PipelineConfig) -> str:
    """The id of the dataset's newest text bank; refused when it has none yet."""
    layout = Layout.at(cfg.workdir)
    alias = layout.textbank_alias(cfg.dataset.name)
    if not alias.exists():
        raise ValueError(f"dataset {cfg.dataset.name!r} has no text bank in {layout.root}: run `coderflow texts` first")
    return alias.read_text().strip()
