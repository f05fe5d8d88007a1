"""The commands that run flows: the whole pipeline (demo, run), each of its stages, few-shot, adapters, serve."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import yaml
from cyclopts import App, Parameter

from coderflow.cli.app import Force, Options, TextBank, app, command, console, load_config
from coderflow.cli.texts_commands import newest_bank, texts_app
from coderflow.config import PipelineConfig
from coderflow.console import metrics_table, print_rows
from coderflow.preflight import check_test_classes, preflight
from coderflow.storage.db import QUERIES_DIR, query, sql_file
from coderflow.storage.layout import Layout
from coderflow.tasks.report.tables import without_trivial_top5

# The flows import Prefect and torch: each command imports its flow when it runs, so `--help` answers quickly and an
# up-to-date `coderflow run` never loads them.

RANDOM_WEIGHTS_NOTE = (
    "Note: model {model} has RANDOM weights (no pretrained weights are reachable offline), so accuracies are at "
    "chance level. For real results pass a model with published weights, e.g. --model.name ViT-B-32 --pretrained "
    "openai (or --pretrained with a hub id or a checkpoint file)."
)


def _print_run(
    cfg: PipelineConfig,
    run_id: str,
    seconds: float | None = None,
    stages: dict[str, float] | None = None,
    flow_run_id: str | None = None,
) -> None:
    """The run's metrics (sorted by top-1, difference to clip), the time per stage and its Prefect UI link."""
    layout = Layout.at(cfg.workdir)
    rows = query(layout, sql_file("accuracy_per_method"), {"run_id": run_id}).to_pylist()
    n_classes = query(layout, sql_file("class_count", QUERIES_DIR), params=[cfg.dataset.name])
    rows = without_trivial_top5(rows, n_classes["n"][0].as_py())  # 5 classes or fewer: top-5 is always 1
    console.print(metrics_table(rows, title=f"run {run_id}"))
    if stages:
        console.print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()), highlight=False)
    done = f"finished in {seconds:.1f} s; " if seconds is not None else ""
    console.print(f"{done}results in {layout.root}", highlight=False, soft_wrap=True)
    if flow_run_id:
        from coderflow.flows.naming import ui_link

        link = ui_link(flow_run_id)
        console.print(f"Prefect UI: {link}" if link else f"flow run {flow_run_id}", highlight=False, soft_wrap=True)
    _note_random_weights(cfg)


def _note_random_weights(cfg: PipelineConfig) -> None:
    if not cfg.model.pretrained:
        console.print(RANDOM_WEIGHTS_NOTE.format(model=cfg.model.name), style="yellow")


def _run_pipeline(cfg: PipelineConfig, force: bool) -> None:
    """The end-to-end pipeline, unless the newest recorded run had the same inputs (then torch and Prefect never load)."""
    from coderflow.flows.uptodate import check_inputs

    verdict = check_inputs(cfg) if not force else None
    if verdict is not None and verdict.run_id is not None:
        if verdict.up_to_date:
            when = f"{verdict.finished_at:%Y-%m-%d %H:%M:%S %Z}".strip() if verdict.finished_at else "unknown date"
            console.print(f"up to date: run {verdict.run_id} ({when}) has the same inputs; --force to run again")
            _print_run(cfg, verdict.run_id)
            return
        console.print(f"inputs changed since run {verdict.run_id} ({', '.join(verdict.changed)}): running", style="dim")
    preflight(cfg, ingests=[cfg.dataset.split], embeds=True)
    from coderflow.flows.pipeline import pipeline
    from coderflow.flows.runners import with_runner

    start = time.perf_counter()
    result = with_runner(pipeline, cfg)(cfg)
    _print_run(cfg, result.run_id, time.perf_counter() - start, result.stages, result.flow_run_id)


@command("demo")
def demo(*, force: Force = False, options: Options = None) -> None:
    """Run the whole pipeline offline on the built-in procedural demo dataset (nothing runs when up to date)."""
    cfg = load_config(options, dataset={"kind": "demo", "source": None})
    _run_pipeline(cfg, force or cfg.dataset.reingest)


@command("run")
def run(*, force: Force = False, options: Options = None) -> None:
    """Run the pipeline end to end on a dataset (nothing runs when the inputs are those of the newest run)."""
    cfg = load_config(options)
    _run_pipeline(cfg, force or cfg.dataset.reingest or cfg.dataset.replace)


@command("ingest")
def ingest(*, options: Options = None) -> None:
    """Write a dataset split as WebDataset shards (skipped when the source and settings are unchanged)."""
    cfg = load_config(options)
    cfg = preflight(cfg, ingests=[cfg.dataset.split])
    from coderflow.flows.pipeline import ingest_dataset

    out = ingest_dataset(cfg.dataset, cfg.workdir)
    console.print(f"{out.samples} samples in {len(out.shards)} shards" + (" (up to date)" if out.skipped else ""))


@command("embed")
def embed(*, options: Options = None) -> None:
    """Embed an ingested split's images (one task per shard; finished shards are skipped)."""
    cfg = preflight(load_config(options), needs=[None], embeds=True)
    from coderflow.flows.pipeline import embed_images

    out = embed_images(cfg.dataset, cfg.model, cfg.workdir, cfg.max_failure_rate)
    print_rows([out.row()])


app.command(texts_app)  # `coderflow texts [import|export]` (texts_commands.py), listed after embed


@command("coder")
def coder(*, textbank: TextBank = None, options: Options = None) -> None:
    """Materialise CODER vectors (image-to-text cosines) of an embedded split to Parquet."""
    cfg = preflight(load_config(options), needs=[None])
    bank = textbank or newest_bank(cfg)
    from coderflow.flows.pipeline import build_coder

    print_rows([build_coder(cfg.dataset, cfg.model, bank, cfg.coder, cfg.workdir).row()])


@command("classify")
def classify(*, textbank: TextBank = None, options: Options = None) -> None:
    """Classify an embedded split with every method, evaluate, and load the results into DuckDB."""
    cfg = preflight(load_config(options), needs=[None], embeds=True)
    bank = textbank or newest_bank(cfg)
    from coderflow.flows.pipeline import classify as classify_flow

    start = time.perf_counter()
    result = classify_flow(
        cfg.dataset, cfg.model, bank, list(cfg.methods), workdir=cfg.workdir, run_name=cfg.run_name,
        classify=cfg.classify, config=cfg.model_dump(mode="json"),
    )  # fmt: skip
    _print_run(cfg, result.run_id, time.perf_counter() - start, flow_run_id=result.flow_run_id)


@command("fewshot")
def fewshot(*, options: Options = None) -> None:
    """Few-shot runs over shots x seeds (prototype, Tip-Adapter, CODER-Adapter, Tip-X); needs train/val/test splits."""
    cfg = load_config(options)
    splits = [cfg.fewshot.train_split, cfg.fewshot.val_split, cfg.fewshot.test_split]
    cfg = preflight(cfg, ingests=splits, embeds=True, shots=cfg.fewshot.shots)
    for target in cfg.fewshot.target_datasets(cfg.dataset):  # distribution shift: each test set checked as well
        preflight(cfg.model_copy(update={"dataset": target}), ingests=[target.split])
    check_test_classes(cfg)
    from coderflow.flows.fewshot import fewshot as fewshot_flow
    from coderflow.flows.runners import with_runner

    start = time.perf_counter()
    result = with_runner(fewshot_flow, cfg)(cfg)
    rows = [{k: r[k] for k in ("method", "shots", "seeds", "top1_mean", "top1_std")} for r in result.table]
    print_rows(rows, title=f"few-shot run {result.run_id} (test top-1 over seeds)")
    if result.shift:
        print_rows(result.shift, title=f"distribution shift of run {result.run_id} (test top-1, mean over seeds)")
    console.print(f"finished in {time.perf_counter() - start:.1f} s; plot: {result.plot}")
    _note_random_weights(cfg)


adapter_app = App(name="adapter", help="IMO adapters: train on a labeled collection, measure intra-modal overlap.")
app.command(adapter_app)


@command("adapter train", parent=adapter_app)
def adapter_train(*, options: Options = None) -> None:
    """Train bottleneck adapters in the image encoder with cross-entropy; checkpoints per epoch, resumable."""
    cfg = load_config(options)
    cfg = preflight(cfg, ingests=[cfg.adapter.train_split], embeds=True)
    from coderflow.flows.adapter import adapter_train as train_flow

    out = train_flow(cfg)
    print_rows([out.row()])
    console.print(f"use it with --model.adapter {out.adapter_id} (fewshot, embed, adapter overlap)")


@command("adapter overlap", parent=adapter_app)
def adapter_overlap(*, options: Options = None) -> None:
    """Overlap of same- vs different-class cosine distributions, original vs adapted image features."""
    cfg = load_config(options)
    if not cfg.model.adapter:
        raise ValueError("adapter overlap needs --model.adapter ID (an id from `coderflow adapter train`)")
    cfg = preflight(cfg, ingests=[cfg.dataset.split], embeds=True)
    from coderflow.flows.adapter import adapter_overlap as overlap_flow

    out = overlap_flow(cfg)
    rows = [{k: r[k] for k in ("model_id", "metric", "value")} for r in out.metrics]
    print_rows(rows, title=f"intra-modal overlap, run {out.run_id}")


@command("serve")
def serve(
    *,
    cron: Annotated[
        str, Parameter(help="cron schedule of the end-to-end pipeline, or of the suite with --suite ('' for none)")
    ] = "0 2 * * *",
    name: Annotated[str, Parameter(help="deployment name of every served flow")] = "laptop",
    suite: Annotated[
        Optional[Path],  # noqa: UP045
        Parameter(help="a suite file (docs/suites.md): served as the `suite` deployment on --cron"),
    ] = None,
    options: Options = None,
) -> None:
    """Serve every flow as a deployment (the pipeline, or a suite, on a cron schedule) until Ctrl-C; runs show in the
    UI."""
    from coderflow.flows.serve import serve_flows

    spec = None
    if suite is not None:
        from coderflow.flows.suite_inputs import check_cells
        from coderflow.suite_config import expand, read_suite

        spec = read_suite(suite, options.model_dump(exclude_none=True) if options is not None else {})
        check_cells(expand(spec))
    serve_flows(preflight(load_config(options)), name=name, cron=cron or None, suite=spec)


@command("config")
def show_config(*, options: Options = None) -> None:
    """Print the configuration a command would run with (defaults < YAML file < environment < flags) as YAML."""
    print(yaml.safe_dump(load_config(options).model_dump(mode="json"), sort_keys=False), end="")
