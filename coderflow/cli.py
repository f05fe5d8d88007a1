"""The `coderflow` command line, generated from the typed config models: every setting is a flag named by its key."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from cyclopts import App, CycloptsError, Parameter
from cyclopts.config import Env
from cyclopts.exceptions import UnusedCliTokensError
from pydantic import BaseModel, BeforeValidator, ValidationError, create_model
from rich.console import Console
from rich.markup import escape as markup_escape

from coderflow.config import (
    FLAG_ALIASES,
    PipelineConfig,
    build_config,
    describe_validation_error,
)
from coderflow.console import metrics_table, print_rows, printable, printable_table
from coderflow.storage.db import QueryError, canned_queries, check_workdir, csv_ready, query, sql_file
from coderflow.storage.layout import Layout
from coderflow.tasks.evaluate.compare import BOOTSTRAP_RESAMPLES
from coderflow.tasks.report.tables import without_trivial_top5

UNIONS = (Union, types.UnionType)
console = Console()
err_console = Console(stderr=True)

RANDOM_WEIGHTS_NOTE = (
    "Note: model {model} has RANDOM weights (no pretrained weights are reachable offline), so accuracies are at "
    "chance level. For real results pass a model with published weights, e.g. --model.name ViT-B-32 --pretrained "
    "openai (or --pretrained with a hub id or a checkpoint file)."
)

# The config sections (fields of PipelineConfig) each command reads; its flags are exactly these sections' settings.
RUN = (
    "preset", "workdir", "dataset", "model", "texts", "coder", "classify", "methods", "templates", "max_failure_rate",
    "run_name", "runner", "runner_address", "runner_workers",
)  # fmt: skip
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "run": RUN,
    "demo": RUN,
    "ingest": ("workdir", "dataset"),
    "embed": ("workdir", "dataset", "model", "max_failure_rate"),
    "texts": ("preset", "workdir", "dataset", "model", "texts", "templates", "classify"),
    "texts import": ("workdir", "dataset", "model", "texts"),
    "coder": ("workdir", "dataset", "model", "coder"),
    "classify": ("preset", "workdir", "dataset", "model", "classify", "methods", "templates", "run_name"),
    "fewshot": (
        "preset",
        "workdir",
        "dataset",
        "model",
        "texts",
        "classify",
        "fewshot",
        "templates",
        "max_failure_rate",
        "run_name",
    ),
    "adapter train": ("workdir", "dataset", "model", "adapter", "run_name"),
    "adapter overlap": ("workdir", "dataset", "model", "adapter", "max_failure_rate", "run_name"),
    "serve": tuple(PipelineConfig.model_fields),
    "config": tuple(PipelineConfig.model_fields),
}


def flag_name(dotted: str) -> str:
    """The flag of a config key: 'texts.llm.max_tokens' -> '--texts.llm.max-tokens'."""
    return "--" + dotted.replace("_", "-")


def _split_commas(value: Any) -> Any:
    """List settings take repeated flags, several values, or one comma-separated value: 1,2,4."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    return [p.strip() for x in items for p in (x.split(",") if isinstance(x, str) else [x]) if str(p).strip()]


def _default_text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if len(value) <= 8 else f"{len(value)} values"
    return str(value)


def _choices(dotted: str) -> Any:
    """Method names come from the registries, so `--help` lists them and a typo is refused while parsing."""
    if dotted == "methods":
        from coderflow.tasks.classify.zeroshot import SCORERS
    elif dotted == "fewshot.methods":
        from coderflow.tasks.fewshot.scorers import SCORERS  # type: ignore[assignment]
    else:
        return None
    return tuple[Literal[tuple(SCORERS)], ...]  # type: ignore[valid-type]


def _leaf(dotted: str, field: Any) -> tuple[Any, Any]:
    annotation = _choices(dotted) or field.annotation
    inner = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in UNIONS else []
    base = inner[0] if len(inner) == 1 else annotation
    alias = FLAG_ALIASES.get(dotted, ())
    names = [flag_name(dotted), *([alias] if isinstance(alias, str) else alias)]
    help_text = re.sub(r"<(\w+)>", r"\1", field.description or "")
    default = field.get_default(call_default_factory=True)  # a default_factory's value (methods), not its marker
    if default is not None and not isinstance(default, dict):
        help_text += f" [default: {_default_text(default)}]"
    kwargs: dict[str, Any] = {"name": names, "help": help_text.strip(), "show_default": False, "show_env_var": True}
    if get_origin(base) is dict:
        base = str  # `k=v,k=v` or JSON, parsed by the config model
        kwargs["help"] += " (e.g. a=1,b=2)"
    elif get_origin(base) is tuple:
        fixed = Ellipsis not in get_args(base)  # (beta, alpha) pairs: one comma-separated value
        kwargs |= {"n_tokens": 1} if fixed else {"consume_multiple": True}
        kwargs["negative_iterable"] = ""  # no --empty-<flag>: an empty tuple is never a valid setting
        kwargs["help"] += " (comma-separated)"
        return Annotated[Optional[base], BeforeValidator(_split_commas), Parameter(**kwargs)], None  # noqa: UP045
    elif base is bool:
        kwargs["negative"] = ""
    return Annotated[Optional[base], Parameter(**kwargs)], None  # noqa: UP045 (a runtime type for pydantic)


@cache
def options_model(model: type[BaseModel], fields: tuple[str, ...] | None = None, prefix: str = "") -> type[BaseModel]:
    """A model of `model`'s settings with every field optional and unvalidated: what the user gave, nothing more.

    Flags are parsed into it (defaults and cross-field rules stay in the config model, applied once after the YAML
    file and environment are laid under the flags).
    """
    spec: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if fields is not None and name not in fields:
            continue
        dotted = prefix + name
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            sub = options_model(field.annotation, None, dotted + ".")
            spec[name] = (Annotated[Optional[sub], Parameter(name="*")], None)  # noqa: UP045
        else:
            spec[name] = _leaf(dotted, field)
    title = "Options" + "".join(p.title() for p in (prefix.strip(".") or model.__name__).split("."))
    return create_model(title, **spec)


@dataclass
class Session:
    """The options every command shares: a YAML file under the flags, and how much Prefect logs."""

    config: Path | None = None
    verbose: bool = False


SESSION = Session()


def load_config(options: BaseModel | None, **fixed: Any) -> PipelineConfig:
    """Defaults < YAML file (-c) < environment (CODERFLOW_*) < flags, validated once; errors name the key."""
    given = options.model_dump(exclude_none=True) if options is not None else {}
    return build_config(SESSION.config, given, fixed)


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
    n_classes = query(layout, "SELECT count(*) AS n FROM classes WHERE dataset = ?", params=[cfg.dataset.name])
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
    from coderflow.preflight import preflight

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


class ConfigEnv(Env):
    """CODERFLOW_<KEY> environment variables for config settings only (and --workdir): a command's own options
    (`compare --methods A,B`) never read the variable of a setting with the same name (CODERFLOW_METHODS)."""

    def __call__(self, app: Any, commands: tuple[str, ...], arguments: Any) -> None:
        from cyclopts.argument import ArgumentCollection

        chosen = ArgumentCollection([a for a in arguments if a.keys or a.name == "--workdir"])
        super().__call__(app, commands, chosen)


app = App(
    name="coderflow",
    help="CLIP classification with CODER, run as Prefect flows. Every setting is a flag named by its config key "
    "(--dataset.source, --texts.llm.timeout); precedence: flags > CODERFLOW_* environment > YAML file (-c) > defaults.",
    version=version("coderflow"),
    config=[ConfigEnv("CODERFLOW_", command=False)],
    default_parameter=Parameter(show_env_var=False),
)


def command(name: str, parent: App = app, default: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as `coderflow <name>` with the flags of its config sections (COMMAND_SECTIONS)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        fields = COMMAND_SECTIONS.get(name)
        if fields is not None:
            options = options_model(PipelineConfig, tuple(f for f in PipelineConfig.model_fields if f in fields))
            fn.__annotations__["options"] = Annotated[Optional[options], Parameter(name="*")]  # noqa: UP045
        if default:
            parent.default(fn)
        else:
            parent.command(fn, name=name.split()[-1])
        return fn

    return register


Options = Any  # replaced per command by its generated options model (see `command`)
Force = Annotated[bool, Parameter(negative="", help="run even when the newest run had the same config and inputs")]
TextBank = Annotated[Optional[str], Parameter(help="text bank id (default: the dataset's newest)")]  # noqa: UP045
Format = Annotated[Literal["dclip", "cupl", "clip-benchmark"], Parameter(name="--format", help="file format")]


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
    from coderflow.preflight import preflight

    cfg = load_config(options)
    cfg = preflight(cfg, ingests=[cfg.dataset.split])
    from coderflow.flows.pipeline import ingest_dataset

    out = ingest_dataset(cfg.dataset, cfg.workdir)
    console.print(f"{out.samples} samples in {len(out.shards)} shards" + (" (up to date)" if out.skipped else ""))


@command("embed")
def embed(*, options: Options = None) -> None:
    """Embed an ingested split's images (one task per shard; finished shards are skipped)."""
    from coderflow.preflight import preflight

    cfg = preflight(load_config(options), needs=[None], embeds=True)
    from coderflow.flows.pipeline import embed_images

    out = embed_images(cfg.dataset, cfg.model, cfg.workdir, cfg.max_failure_rate)
    print_rows([out.row()])


texts_app = App(name="texts", help="Text banks: generate one (no sub-command), import a published file, or export.")
app.command(texts_app)


@command("texts", parent=texts_app, default=True)
def texts(*, options: Options = None) -> None:
    """Generate the dataset's text bank (offline or with an LLM) and embed its new texts."""
    from coderflow.preflight import preflight

    cfg = preflight(load_config(options), needs=[None], embeds=True)
    from coderflow.flows.pipeline import text_bank

    templates = list(cfg.templates) if cfg.templates else None
    out = text_bank(cfg.dataset, cfg.model, cfg.texts, cfg.workdir, templates, cfg.classify)
    from coderflow.console import bank_summary_table

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
    from coderflow.preflight import preflight

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
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
) -> None:
    """Write a text bank in a published format (dclip / cupl: class -> texts; clip-benchmark: dataset -> templates)."""
    from coderflow.storage.atomic import write_text
    from coderflow.storage.parquet_io import read_table
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
        sql = "SELECT dataset FROM runs WHERE textbank_id = ? ORDER BY started_at DESC LIMIT 1"
        rows = query(layout, sql, params=[textbank]).to_pylist()
        if rows and rows[0]["dataset"]:
            return rows[0]["dataset"]
    for alias in sorted((layout.root / "texts").glob("latest-*.txt")):
        if alias.read_text().strip() == textbank:
            return alias.name.removeprefix("latest-").removesuffix(".txt")
    return None


def _newest_bank(cfg: PipelineConfig) -> str:
    layout = Layout.at(cfg.workdir)
    alias = layout.textbank_alias(cfg.dataset.name)
    if not alias.exists():
        raise ValueError(f"dataset {cfg.dataset.name!r} has no text bank in {layout.root}: run `coderflow texts` first")
    return alias.read_text().strip()


@command("coder")
def coder(*, textbank: TextBank = None, options: Options = None) -> None:
    """Materialise CODER vectors (image-to-text cosines) of an embedded split to Parquet."""
    from coderflow.preflight import preflight

    cfg = preflight(load_config(options), needs=[None])
    bank = textbank or _newest_bank(cfg)
    from coderflow.flows.pipeline import build_coder

    print_rows([build_coder(cfg.dataset, cfg.model, bank, cfg.coder, cfg.workdir).row()])


@command("classify")
def classify(*, textbank: TextBank = None, options: Options = None) -> None:
    """Classify an embedded split with every method, evaluate, and load the results into DuckDB."""
    from coderflow.preflight import preflight

    cfg = preflight(load_config(options), needs=[None], embeds=True)
    bank = textbank or _newest_bank(cfg)
    from coderflow.flows.pipeline import classify as classify_flow

    start = time.perf_counter()
    result = classify_flow(
        cfg.dataset, cfg.model, bank, list(cfg.methods), workdir=cfg.workdir, run_name=cfg.run_name,
        params=cfg.classify, config=cfg.model_dump(mode="json"),
    )  # fmt: skip
    _print_run(cfg, result.run_id, time.perf_counter() - start, flow_run_id=result.flow_run_id)


@command("fewshot")
def fewshot(*, options: Options = None) -> None:
    """Few-shot runs over shots x seeds (prototype, Tip-Adapter, CODER-Adapter, Tip-X); needs train/val/test splits."""
    from coderflow.preflight import preflight

    cfg = load_config(options)
    splits = [cfg.fewshot.train_split, cfg.fewshot.val_split, cfg.fewshot.test_split]
    cfg = preflight(cfg, ingests=splits, embeds=True, shots=cfg.fewshot.shots)
    from coderflow.flows.fewshot import fewshot as fewshot_flow

    start = time.perf_counter()
    result = fewshot_flow(cfg)
    rows = [{k: r[k] for k in ("method", "shots", "seeds", "top1_mean", "top1_std")} for r in result.table]
    print_rows(rows, title=f"few-shot run {result.run_id} (test top-1 over seeds)")
    console.print(f"finished in {time.perf_counter() - start:.1f} s; plot: {result.plot}")
    _note_random_weights(cfg)


adapter_app = App(name="adapter", help="IMO adapters: train on a labeled collection, measure intra-modal overlap.")
app.command(adapter_app)


@command("adapter train", parent=adapter_app)
def adapter_train(*, options: Options = None) -> None:
    """Train bottleneck adapters in the image encoder with cross-entropy; checkpoints per epoch, resumable."""
    from coderflow.preflight import preflight

    cfg = load_config(options)
    cfg = preflight(cfg, ingests=[cfg.adapter.train_split], embeds=True)
    from coderflow.flows.adapter import adapter_train as train_flow

    out = train_flow(cfg)
    print_rows([out.row()])
    console.print(f"use it with --model.adapter {out.adapter_id} (fewshot, embed, adapter overlap)")


@command("adapter overlap", parent=adapter_app)
def adapter_overlap(*, options: Options = None) -> None:
    """Overlap of same- vs different-class cosine distributions, original vs adapted image features."""
    from coderflow.preflight import preflight

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
    cron: Annotated[str, Parameter(help="cron schedule of the end-to-end pipeline ('' for none)")] = "0 2 * * *",
    name: Annotated[str, Parameter(help="deployment name of every served flow")] = "laptop",
    options: Options = None,
) -> None:
    """Serve every flow as a deployment (the pipeline on a cron schedule) until Ctrl-C; runs show in the UI."""
    from coderflow.flows.serve import serve_flows
    from coderflow.preflight import preflight

    serve_flows(preflight(load_config(options)), name=name, cron=cron or None)


@command("config")
def show_config(*, options: Options = None) -> None:
    """Print the configuration a command would run with (defaults < YAML file < environment < flags) as YAML."""
    import yaml

    print(yaml.safe_dump(load_config(options).model_dump(mode="json"), sort_keys=False), end="")


RUNS_SQL = """
SELECT r.run_id, r.flow, r.dataset, r.model_id, r.textbank_id, r.started_at,
       round(coalesce(r.duration_s, date_diff('millisecond', r.started_at, r.finished_at) / 1000), 1) AS seconds,
       r.status, string_agg(m.method || ' ' || round(m.value, 4), ', ' ORDER BY m.value DESC) AS top1,
       coalesce(r.flow_run_id, json_extract_string(r.config, '$.flow_run_id')) AS flow_run_id
FROM runs r
LEFT JOIN metrics m ON m.run_id = r.run_id AND m.metric = 'top1' AND m.class_index IS NULL AND m.shots IS NULL
WHERE ($dataset IS NULL OR r.dataset = $dataset) AND ($flow IS NULL OR r.flow = $flow)
  AND ($model IS NULL OR r.model_id = $model OR starts_with(r.model_id, $model || '__')
       OR json_extract_string(r.config, '$.model.name') = $model)
GROUP BY ALL
ORDER BY r.started_at DESC
"""


def _ui_base() -> str | None:
    """The Prefect UI address from the environment (no Prefect import: `runs` answers in a second)."""
    ui = os.environ.get("PREFECT_UI_URL")
    api = os.environ.get("PREFECT_API_URL")
    return ui or (api.removesuffix("/").removesuffix("/api") if api else None)


@app.command(name="runs")
def runs_cmd(
    *,
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
    dataset: Annotated[Optional[str], Parameter(help="only runs on this dataset")] = None,  # noqa: UP045
    model: Annotated[
        Optional[str],  # noqa: UP045
        Parameter(help="only runs of this model: its id (ViT-B-32__openai) or architecture (ViT-B-32)"),
    ] = None,
    flow: Annotated[
        Optional[str],  # noqa: UP045
        Parameter(help="only runs of this flow (pipeline, classify, few-shot, train-adapter, adapter-overlap)"),
    ] = None,
    fmt: Annotated[Literal["table", "json"], Parameter(name="--format")] = "table",
) -> None:
    """One line per run: id, flow, dataset, model, text bank, start, seconds, status, zero-shot top-1 per method."""
    given = {"dataset": dataset or None, "flow": flow or None, "model": model or None}
    rows = query(Layout.at(workdir), RUNS_SQL, params=given).to_pylist()
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
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
    fmt: Annotated[Literal["table", "json"], Parameter(name="--format")] = "table",
) -> None:
    """Paired comparison on the samples both classified: accuracy difference (A - B), bootstrap 95% interval, exact
    McNemar p-value."""
    from coderflow.tasks.evaluate.compare import compare_runs

    layout = Layout.at(workdir)
    run_b = run_b or run_a
    present = {
        r["run_id"]: r["methods"]
        for r in query(
            layout, "SELECT run_id, list(DISTINCT method ORDER BY method) AS methods FROM predictions "
            "WHERE run_id IN (?, ?) GROUP BY run_id", params=[run_a, run_b],
        ).to_pylist()
    }  # fmt: skip
    for run in (run_a, run_b):
        if run not in present:
            raise ValueError(f"run {run!r} has no predictions in {layout.root}: see `coderflow runs`")
    if methods:
        pair = [m.strip() for m in methods.split(",")]
        if len(pair) != 2:
            raise ValueError(f"--methods {methods!r}: give two methods, A,B")
        a_methods, b_methods = [pair[0]], [pair[1]]
    elif run_b == run_a:
        others = [m for m in present[run_a] if m != "clip"]
        if "clip" not in present[run_a] or not others:
            raise ValueError(f"run {run_a} has no clip and other methods to compare: pass --methods A,B or RUN_B")
        a_methods, b_methods = others, ["clip"] * len(others)
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
    from coderflow.tasks.evaluate.reference import reference_warnings, run_against_reference

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
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
) -> None:
    """A self-contained report of a run to share: configuration, metrics against clip with 95% intervals, reference
    numbers, per-class recall, most confused classes, calibration, accuracy against shots."""
    from coderflow.storage.atomic import atomic_path
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


@app.command(name="ablate")
def ablate_cmd(
    run_id: Annotated[str, Parameter(help="a zero-shot run id (see `coderflow runs`)")],
    /,
    *,
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
    fmt: Annotated[Literal["table", "json"], Parameter(name="--format")] = "table",
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
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
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
        import pyarrow.csv as pacsv

        pacsv.write_csv(printable_table(csv_ready(table)), sys.stdout.buffer)
    elif fmt == "json":  # ensure_ascii: a control character in a value is written as \u001b, never raw
        console.print_json(json.dumps(table.to_pylist(), default=str), ensure_ascii=True)
    else:
        print_rows(table.to_pylist(), columns=table.column_names)


@app.command(name="doctor")
def doctor_cmd(
    *,
    workdir: Annotated[Optional[str], Parameter(help="work directory")] = None,  # noqa: UP045
    fix: Annotated[bool, Parameter(negative="", help="repair what can be recomputed")] = False,
) -> int:
    """Check a work directory (markers, stored files against their hashes, views, temp files, runs left running):
    one line per problem; --fix repairs what it can and never deletes a result it cannot recompute. Exit code 1
    while problems remain."""
    from coderflow.storage.doctor import diagnose, repair
    from coderflow.storage.lock import workdir_lock

    layout = Layout.at(workdir)
    check_workdir(layout)
    findings, checked = diagnose(layout)
    fixed = []
    if fix and findings:
        with workdir_lock(layout.root, "coderflow doctor --fix"):
            findings, checked = diagnose(layout)  # again, under the lock: a run may have finished meanwhile
            fixed = repair(layout, findings)
    for f in findings:
        print(printable(("fixed " if f in fixed else "") + f.line(layout.root)))
    left = len(findings) - len(fixed)
    print(f"{layout.root}: {checked} stored files checked, {len(findings)} problems, {len(fixed)} fixed, {left} left")
    return 1 if left else 0


@app.meta.default
def _launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    config: Annotated[Path | None, Parameter(name=["--config", "-c"], help="YAML config file under the flags")] = None,
    verbose: Annotated[bool, Parameter(name=["--verbose", "-v"], negative="", help="show Prefect's task logs")] = False,
) -> Any:
    SESSION.config, SESSION.verbose = config, verbose
    if config is not None and not config.is_file():
        raise ValueError(f"config file {str(config)!r} not found: pass the path of a YAML file to -c")
    from coderflow.console import quiet_prefect

    quiet_prefect(not verbose)
    return app(tokens)


def _expected_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: bad values, missing files, refused queries and settings."""
    from coderflow.tasks import ConfigError

    return (ValueError, FileNotFoundError, QueryError, ConfigError, TimeoutError)  # a lock wait that ran out


def _one_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ValidationError):
        text = describe_validation_error(cause, "the flags")
    elif isinstance(exc, UnusedCliTokensError):
        text = f"unexpected argument(s) {' '.join(exc.unused_tokens)}: settings are flags, a YAML file goes after -c"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is None:  # coderflow's own message: no [Errno]
        text = " ".join(exc.strerror.split())
    else:
        text = " ".join(str(exc).split())
    return markup_escape(printable(text))  # a value or class name in the message may hold ESC or '[/]'


def _interrupt(signum: int, frame: Any) -> None:
    from coderflow.interrupt import request_stop

    request_stop()  # threads still sending LLM requests send nothing more (no new request, no retry)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; expected errors print one line naming the input and the fix, and exit with code 2."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # SIGTERM ends a run like Ctrl-C
    try:
        return _main(tokens)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(tokens: list[str]) -> int:
    try:
        result = app.meta(
            tokens, print_error=False, exit_on_error=False, help_on_error=False, result_action="return_value"
        )
    except KeyboardInterrupt:
        from coderflow.interrupt import request_stop

        request_stop()  # Ctrl-C: the threads still at work end before the process exits
        err_console.print("[bold red]interrupted[/]: finished files are kept, the rest is redone on the next run")
        return 130
    except CycloptsError as exc:
        err_console.print(f"[bold red]error:[/] {_one_line(exc)} (see --help)", highlight=False, soft_wrap=True)
        return 2
    except _expected_errors() as exc:
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0  # a command's exit code


def entry() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
