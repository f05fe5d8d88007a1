"""The `coderflow` command line: every stage, the end-to-end run, the demo and read-only SQL."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from coderflow.config import ClassifyConfig, DatasetConfig, PipelineConfig, describe_validation_error, load_yaml
from coderflow.storage.db import QueryError, query, sql_file
from coderflow.storage.layout import Layout, resolve_workdir

app = typer.Typer(help="CLIP classification with CODER, run as Prefect flows.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

RANDOM_WEIGHTS_NOTE = (
    "Note: model {model} has RANDOM weights (no pretrained weights are reachable offline), so accuracies are at "
    "chance level. For real results pass --pretrained openai (or a hub id, or a checkpoint file), e.g. "
    "`coderflow run config.yaml --model ViT-B-32 --pretrained openai`."
)

Workdir = Annotated[str | None, typer.Option(help="work directory (default $CODERFLOW_HOME or ./coderflow-data)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file; flags override it")]
Dataset = Annotated[
    str | None, typer.Option("--dataset", help="dataset name in paths and tables (default: the source folder's name)")
]
Source = Annotated[str | None, typer.Option(help="image folder, or CLIP_benchmark root (path or URL)")]
Kind = Annotated[str | None, typer.Option(help="demo | folder | wds (default: folder for a directory, else wds)")]
Split = Annotated[str | None, typer.Option(help="split name (default test)")]
Model = Annotated[str | None, typer.Option("--model", help="open_clip architecture, e.g. ViT-B-32")]
Pretrained = Annotated[str | None, typer.Option(help="pretrained tag (openai), hub id or checkpoint file")]
Device = Annotated[str | None, typer.Option(help="torch device: cpu, cuda, cuda:1")]
BatchSize = Annotated[int | None, typer.Option(help="images per inference batch")]
AdapterId = Annotated[
    str | None, typer.Option("--adapter", help="adapter id from `coderflow adapter train`, or a file")
]
Methods = Annotated[str | None, typer.Option(help="comma-separated zero-shot methods, e.g. clip,coder")]
Runner = Annotated[str | None, typer.Option(help="task runner: threads | dask | ray (flows/runners.py)")]
RunnerAddress = Annotated[str | None, typer.Option(help="dask scheduler or ray address; default: a local cluster")]
RunnerWorkers = Annotated[int | None, typer.Option(help="threads, or local dask/ray worker processes")]
Reingest = Annotated[bool, typer.Option("--reingest", help="ingest the source again even when it looks unchanged")]
ReplaceDataset = Annotated[
    bool,
    typer.Option(
        "--replace-dataset", help="ingest another source or kind under an existing dataset name, deleting the old one"
    ),
]
SplitRatio = Annotated[
    str | None,
    typer.Option(
        help="split one image folder into train,val,test by these shares, e.g. 0.5,0.2,0.3 (stratified, seeded)"
    ),
]
Preset = Annotated[
    str | None,
    typer.Option(help="protocol preset: per-dataset templates, thresholds and search settings (coderflow/presets/)"),
]
LLMTimeout = Annotated[float | None, typer.Option(help="LLM: seconds per request (default 120)")]
LLMConcurrency = Annotated[
    int | None, typer.Option(help="LLM: requests in flight (default: the server's slots from llama.cpp /props, else 4)")
]
LLMMaxTokens = Annotated[int | None, typer.Option(help="LLM: reply length cap in tokens (default 160)")]
LLMPrice = Annotated[float | None, typer.Option(help="LLM: price per 1,000 tokens, for the cost in the summary")]


def llm_flags(
    timeout: float | None, concurrency: int | None, max_tokens: int | None, price: float | None = None
) -> dict[str, Any]:
    """The --llm-* flags as dotted config keys."""
    return {
        "texts.llm.timeout": timeout, "texts.llm.max_concurrency": concurrency, "texts.llm.max_tokens": max_tokens,
        "texts.llm.price_per_1k": price,
    }  # fmt: skip


Force = Annotated[
    bool, typer.Option("--force", help="run even when the newest run had the same config and inputs (up to date)")
]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def build_config(config: Path | None = None, **flags: Any) -> PipelineConfig:
    """A PipelineConfig from an optional YAML file with flags (dotted keys) laid over it."""
    data: dict[str, Any] = load_yaml(config) if config else {}
    for dotted, value in flags.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    ds = data.get("dataset")
    if isinstance(ds, dict) and ds.get("source") and "kind" not in ds:
        src = Path(str(ds["source"]).replace("{split}", str(ds.get("split") or "test"))).expanduser()
        ds["kind"] = "folder" if src.is_dir() and not (src / "classnames.txt").exists() else "wds"
    if isinstance(ds, dict) and isinstance(ds.get("split_ratio"), str):
        fs = data.get("fewshot") or {}
        names = [fs.get(k) or d for k, d in (("train_split", "train"), ("val_split", "val"), ("test_split", "test"))]
        ds["split_ratio"] = parse_split_ratio(ds["split_ratio"], names)
    try:
        return PipelineConfig(**data)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, str(config) if config else "the command-line flags")) from exc


def parse_split_ratio(text: str, names: list[str]) -> dict[str, float]:
    """'0.5,0.2,0.3' (shares of train, val, test) or 'train=0.5,val=0.2,test=0.3' as a split -> share mapping."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        if all("=" in x for x in items):
            return {k.strip(): float(v) for k, v in (x.split("=", 1) for x in items)}
        if len(items) == len(names):
            return dict(zip(names, map(float, items), strict=True))
    except ValueError:
        pass
    raise ValueError(
        f"--split-ratio {text!r}: give {len(names)} shares for {','.join(names)} (e.g. 0.5,0.2,0.3) or name them "
        "(train=0.5,val=0.2,test=0.3)"
    )


def _config(
    config: Path | None,
    workdir: str | None,
    dataset: str | None = None,
    source: str | None = None,
    kind: str | None = None,
    split: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    methods: str | None = None,
    *,
    check_model: bool = True,
    reingest: bool = False,
    replace: bool = False,
    split_ratio: str | None = None,
    ingests: bool = False,
    preset: str | None = None,
    extra: dict[str, Any] | None = None,
) -> PipelineConfig:
    cfg = build_config(
        config,
        **{
            "dataset.reingest": reingest or None,
            "dataset.replace": replace or None,
            "dataset.split_ratio": split_ratio,
            "preset": preset,
            "workdir": workdir,
            "dataset.name": dataset,
            "dataset.source": source,
            "dataset.kind": kind,
            "dataset.split": split,
            "model.name": model,
            "model.pretrained": pretrained,
            "model.device": device,
            "model.batch_size": batch_size,
            "methods": methods.split(",") if methods else None,
            **(extra or {}),
        },
    )
    return preflight(cfg, check_model=check_model, ingests=[cfg.dataset.split] if ingests else ())


def _with_runner_flags(
    cfg: PipelineConfig, runner: str | None, address: str | None, workers: int | None
) -> PipelineConfig:
    flags = {"runner": runner, "runner_address": address, "runner_workers": workers}
    try:
        return PipelineConfig(**{**cfg.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, "the command-line flags")) from exc


def preflight(cfg: PipelineConfig, check_model: bool = True, ingests: Sequence[str] = ()) -> PipelineConfig:
    """Checks that need no work. For the splits a command ingests (`ingests`): the dataset name is not another
    source's, the splits are not one folder, and the source can be read (the class list, the class folders or the
    shard listing; no image is opened). Then: the model name is known to open_clip.

    `check_model=False` leaves the model name (which imports open_clip) to the caller: see `_run_pipeline`.
    """
    from coderflow.tasks.embed.model import check_model_name
    from coderflow.tasks.ingest.sources import check_distinct_splits, check_identity, make_source

    resolve_workdir(cfg.workdir)  # a URL whose fsspec package is missing fails here, before any work
    ds = cfg.dataset
    if ingests:
        check_identity(ds, cfg.workdir)  # another source under this dataset name: refused before any work
        check_distinct_splits(ds, list(ingests))
        for split in dict.fromkeys(ingests):
            make_source(ds.model_copy(update={"split": split}))
    if check_model:
        check_model_name(cfg.model.name)
    return cfg


def _expected_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix; LLMConfigError only once its module (and openai, ~0.5 s) was imported."""
    llm = sys.modules.get("coderflow.tasks.texts.llm")
    return (ValueError, FileNotFoundError, QueryError, *((llm.LLMConfigError,) if llm else ()))


def _guard(fn: Any) -> Any:
    """Turn expected errors into a one-line message and exit code 2."""
    try:
        return fn()
    except _expected_errors() as exc:
        _fail(str(exc))


def print_table(table: Any, title: str | None = None) -> None:
    t = Table(title=title, show_lines=False)
    for name in table.column_names:
        t.add_column(name)
    for row in table.to_pylist():
        t.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(t)


def _print_metrics(layout: Layout, run_id: str) -> None:
    """The stored accuracy table of one run (from DuckDB; no model, no Prefect)."""
    sql = sql_file("accuracy_per_method").replace(
        "WHERE m.class_index IS NULL", f"WHERE m.class_index IS NULL AND m.run_id = '{run_id}'"
    )
    table = query(layout, sql)  # views of a moved or copied work directory are rebuilt for it (storage/db.py)
    print_table(table.drop_columns(["run_id"]), title=f"run {run_id}")


def _report(cfg: PipelineConfig, result: dict[str, Any], seconds: float) -> None:
    layout = Layout.at(cfg.workdir)
    _print_metrics(layout, result["run_id"])
    console.print(
        f"finished in {seconds:.1f} s; results in {layout.root} (try `coderflow query --canned accuracy_per_method`)"
    )
    _note_random_weights(cfg)


def _note_random_weights(cfg: PipelineConfig) -> None:
    if not cfg.model.pretrained:
        console.print(RANDOM_WEIGHTS_NOTE.format(model=cfg.model.name), style="yellow")


def _up_to_date(cfg: PipelineConfig) -> bool:
    """Print the newest run's results and say so when it had the inputs `cfg` has now (flows/uptodate.py)."""
    from coderflow.flows.uptodate import check_inputs

    verdict = check_inputs(cfg)
    if verdict.run_id is None:
        return False
    when = f"{verdict.finished_at:%Y-%m-%d %H:%M:%S %Z}".strip() if verdict.finished_at else "unknown date"
    if not verdict.up_to_date:
        changed = ", ".join(verdict.changed)
        console.print(f"inputs changed since run {verdict.run_id} ({changed}): running", style="dim", soft_wrap=True)
        return False
    message = f"up to date: run {verdict.run_id} ({when}) has the same inputs; --force to run again"
    console.print(message, highlight=False, soft_wrap=True)
    layout = Layout.at(cfg.workdir)
    _print_metrics(layout, verdict.run_id)
    console.print(f"results in {layout.root} (try `coderflow query --canned accuracy_per_method`)")
    _note_random_weights(cfg)
    return True


def _run_pipeline(cfg: PipelineConfig, force: bool) -> None:
    """The end-to-end pipeline, unless the newest recorded run had the same inputs (then torch and Prefect never load)."""
    if not force and _guard(lambda: _up_to_date(cfg)):
        return
    _guard(lambda: preflight(cfg, ingests=[cfg.dataset.split]))  # imports open_clip: only when the pipeline runs
    from coderflow.flows.pipeline import pipeline
    from coderflow.flows.runners import with_runner

    start = time.perf_counter()
    result = _guard(lambda: with_runner(pipeline, cfg)(cfg))
    _report(cfg, result, time.perf_counter() - start)


@app.command()
def demo(
    workdir: Workdir = None,
    images_per_class: Annotated[int, typer.Option(help="demo images per class (10 classes)")] = 20,
    model: Model = None,
    pretrained: Pretrained = None,
    runner: Runner = None,
    runner_address: RunnerAddress = None,
    runner_workers: RunnerWorkers = None,
    reingest: Reingest = False,
    force: Force = False,
) -> None:
    """Run the whole pipeline offline on the built-in procedural demo dataset (nothing runs when up to date)."""
    cfg = _guard(
        lambda: _config(
            None, workdir, "demo", None, "demo", None, model, pretrained, check_model=False, reingest=reingest
        )
    )
    cfg = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"demo_images_per_class": images_per_class})})
    cfg = _guard(lambda: _with_runner_flags(cfg, runner, runner_address, runner_workers))
    _run_pipeline(cfg, force or reingest)


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="YAML config file")] = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    source: Source = None,
    kind: Kind = None,
    split: Split = None,
    model: Model = None,
    pretrained: Pretrained = None,
    device: Device = None,
    batch_size: BatchSize = None,
    methods: Methods = None,
    runner: Runner = None,
    runner_address: RunnerAddress = None,
    runner_workers: RunnerWorkers = None,
    reingest: Reingest = False,
    replace_dataset: ReplaceDataset = False,
    split_ratio: SplitRatio = None,
    preset: Preset = None,
    llm_timeout: LLMTimeout = None,
    llm_concurrency: LLMConcurrency = None,
    llm_max_tokens: LLMMaxTokens = None,
    force: Force = False,
) -> None:
    """Run the pipeline end to end on a dataset (YAML config and/or flags; nothing runs when up to date)."""
    cfg = _guard(
        lambda: _config(
            config, workdir, dataset, source, kind, split, model, pretrained, device, batch_size, methods,
            check_model=False, reingest=reingest, replace=replace_dataset, split_ratio=split_ratio, preset=preset,
            extra=llm_flags(llm_timeout, llm_concurrency, llm_max_tokens),
        )
    )  # fmt: skip
    cfg = _guard(lambda: _with_runner_flags(cfg, runner, runner_address, runner_workers))
    _run_pipeline(cfg, force or reingest or replace_dataset)


@app.command()
def ingest(
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    source: Source = None,
    kind: Kind = None,
    split: Split = None,
    samples_per_shard: Annotated[int | None, typer.Option(help="samples per tar shard")] = None,
    reingest: Reingest = False,
    replace_dataset: ReplaceDataset = False,
    split_ratio: SplitRatio = None,
) -> None:
    """Write a dataset split as WebDataset shards (skipped when the source and settings are unchanged)."""
    cfg = _guard(
        lambda: _config(
            config, workdir, dataset, source, kind, split, reingest=reingest, replace=replace_dataset,
            split_ratio=split_ratio, ingests=True,
        )
    )  # fmt: skip
    ds: DatasetConfig = cfg.dataset
    if samples_per_shard:
        ds = ds.model_copy(update={"samples_per_shard": samples_per_shard})
    from coderflow.flows.pipeline import ingest_dataset

    out = _guard(lambda: ingest_dataset(ds, cfg.workdir))
    console.print(
        f"{out['samples']} samples in {len(out['shards'])} shards" + (" (up to date)" if out["skipped"] else "")
    )


@app.command()
def embed(
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    split: Split = None,
    model: Model = None,
    pretrained: Pretrained = None,
    device: Device = None,
    batch_size: BatchSize = None,
) -> None:
    """Embed an ingested split's images (one task per shard; finished shards are skipped)."""
    from coderflow.flows.pipeline import embed_images

    cfg = _guard(lambda: _config(config, workdir, dataset, None, None, split, model, pretrained, device, batch_size))
    images = _guard(lambda: embed_images(cfg.dataset, cfg.model, cfg.workdir, cfg.max_failure_rate))
    console.print_json(json.dumps(images))


texts_app = typer.Typer(
    help="Text banks: generate one (no sub-command), import a published file, or export a bank.",
    invoke_without_command=True,
)
app.add_typer(texts_app, name="texts")


@texts_app.callback()
def texts(
    ctx: typer.Context,
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    split: Split = None,
    model: Model = None,
    pretrained: Pretrained = None,
    generator: Annotated[str | None, typer.Option(help="offline (WordNet) | llm (OpenAI-compatible endpoint)")] = None,
    types: Annotated[str | None, typer.Option(help="comma-separated: name,att,ana,syno,ovo")] = None,
    llm_model: Annotated[str | None, typer.Option(help="model name the LLM endpoint serves")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="endpoint URL (default $OPENAI_BASE_URL)")] = None,
    ovo_pairs: Annotated[
        str | None, typer.Option(help="nearest | confused: which class pairs get one-vs-one texts")
    ] = None,
    ovo_budget: Annotated[int | None, typer.Option(help="at most this many class pairs get one-vs-one texts")] = None,
    llm_timeout: LLMTimeout = None,
    llm_concurrency: LLMConcurrency = None,
    llm_max_tokens: LLMMaxTokens = None,
    llm_price: LLMPrice = None,
    preset: Preset = None,
) -> None:
    """Generate the dataset's text bank (offline or with an LLM) and embed its new texts."""
    if ctx.invoked_subcommand is not None:
        return
    from coderflow.flows.pipeline import text_bank

    cfg = _guard(
        lambda: build_config(
            config,
            **{
                "workdir": workdir, "dataset.name": dataset, "dataset.split": split, "model.name": model,
                "model.pretrained": pretrained, "texts.generator": generator,
                "texts.types": types.split(",") if types else None, "texts.llm.model": llm_model,
                "texts.llm.base_url": llm_base_url, "texts.ovo_pairs": ovo_pairs, "texts.ovo_budget": ovo_budget,
                "preset": preset, **llm_flags(llm_timeout, llm_concurrency, llm_max_tokens, llm_price),
            },
        )
    )  # fmt: skip
    templates = list(cfg.templates) if cfg.templates else None
    out = _guard(lambda: text_bank(cfg.dataset, cfg.model, cfg.texts, cfg.workdir, templates, cfg.classify))
    console.print_json(json.dumps({k: v for k, v in out.items() if k != "summary"}, default=str))
    if out.get("summary"):
        table = Table(title=f"text bank {out['textbank_id']}")
        columns = ["kept", "classes", "requests", "requested", "received", "tokens"]
        columns += ["cost"] if cfg.texts.llm.price_per_1k is not None else []
        for col in ("type", *columns, "dropped"):
            table.add_column(col)
        for kind, row in out["summary"].items():
            dropped = ", ".join(f"{k} {v}" for k, v in row["dropped"].items())
            table.add_row(kind, *(str(row.get(c, "")) for c in columns), dropped)
        console.print(table)


TextFormat = Annotated[str, typer.Option("--format", help="dclip | cupl | clip-benchmark")]


@texts_app.command("import")
def texts_import(
    file: Annotated[Path, typer.Argument(help="JSON file: DCLIP/WaffleCLIP descriptors, CuPL prompts, CLIP_benchmark")],
    fmt: TextFormat,
    dataset: Dataset = None,
    key: Annotated[
        str | None, typer.Option(help="clip-benchmark: the file's dataset entry (default --dataset)")
    ] = None,
    config: ConfigFile = None,
    workdir: Workdir = None,
    model: Model = None,
    pretrained: Pretrained = None,
) -> None:
    """Import a published text file as a text bank of an ingested dataset (descriptors become `att` rows)."""
    from coderflow.tasks.texts.imports import FORMATS

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not file.is_file():
        _fail(f"text file {str(file)!r} not found: pass a JSON file")
    flags = {"workdir": workdir, "dataset.name": dataset, "model.name": model, "model.pretrained": pretrained}
    cfg = _guard(lambda: build_config(config, **flags))
    from coderflow.flows.pipeline import import_texts

    out = _guard(lambda: import_texts(cfg.dataset, cfg.model, str(file), fmt, cfg.texts, cfg.workdir, key))
    report = out["report"]
    console.print(f"text bank {out['textbank_id']}: {out['n_texts']} texts from {file}")
    for what in ("unmatched_classes", "unmatched_keys"):
        if report.get(what):
            console.print(f"{what.replace('_', ' ')} ({len(report[what])}): {report[what][:10]}", style="yellow")
    method = {"dclip": "dclip", "cupl": "cupl", "clip-benchmark": "clip"}[fmt]
    console.print(f"use it with: coderflow classify --bank {method}={out['textbank_id']}")


@texts_app.command("export")
def texts_export(
    textbank: Annotated[str, typer.Argument(help="text bank id")],
    fmt: TextFormat,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON file to write")],
    workdir: Workdir = None,
) -> None:
    """Write a text bank in a published format (dclip / cupl: class -> texts; clip-benchmark: templates)."""
    from coderflow.storage.parquet_io import read_table, write_text
    from coderflow.tasks.texts.imports import FORMATS, export_bank

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    path = Layout.at(workdir).textbank_file(textbank)
    if not path.is_file():
        _fail(
            f'no text bank {textbank!r} in {Layout.at(workdir).root}: see `coderflow query "SELECT DISTINCT textbank_id FROM texts"`'
        )
    data = export_bank(read_table(path).to_pylist(), fmt)  # type: ignore[arg-type]
    write_text(json.dumps(data, indent=2, ensure_ascii=False), output)
    console.print(f"{sum(map(len, data.values()))} texts of {len(data)} entries written to {output}")


@app.command()
def coder(
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    split: Split = None,
    model: Model = None,
    pretrained: Pretrained = None,
    fmt: Annotated[str | None, typer.Option("--format", help="dense | sparse (top-k per image)")] = None,
    top_k: Annotated[int | None, typer.Option(help="texts kept per image in the sparse format")] = None,
    textbank: Annotated[str | None, typer.Option(help="text bank id (default: the dataset's newest)")] = None,
) -> None:
    """Materialise CODER vectors (image-to-text cosines) of an embedded split to Parquet."""
    from coderflow.flows.pipeline import build_coder

    cfg = _guard(
        lambda: build_config(
            config,
            **{
                "workdir": workdir, "dataset.name": dataset, "dataset.split": split, "model.name": model,
                "model.pretrained": pretrained, "coder.format": fmt, "coder.top_k": top_k,
            },
        )
    )  # fmt: skip
    bank = textbank or _newest_bank(cfg)
    out = _guard(lambda: build_coder(cfg.dataset, cfg.model, bank, cfg.coder, cfg.workdir))
    console.print_json(json.dumps(out))


def _newest_bank(cfg: PipelineConfig) -> str:
    layout = Layout.at(cfg.workdir)
    alias = layout.textbank_alias(cfg.dataset.name)
    if not alias.exists():
        _fail(f"dataset {cfg.dataset.name!r} has no text bank in {layout.root}: run `coderflow texts` first")
    return alias.read_text().strip()


@app.command()
def classify(
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    split: Split = None,
    model: Model = None,
    pretrained: Pretrained = None,
    methods: Methods = None,
    textbank: Annotated[str | None, typer.Option(help="text bank id (default: the dataset's newest)")] = None,
    bank: Annotated[
        list[str] | None,
        typer.Option("--bank", help="METHOD=BANK_ID: score a method on another bank (e.g. dclip=<imported id>)"),
    ] = None,
    preset: Preset = None,
) -> None:
    """Classify an embedded split with every method, evaluate, and load the results into DuckDB."""
    from coderflow.flows.pipeline import classify as classify_flow

    cfg = _guard(
        lambda: _config(
            config, workdir, dataset, None, None, split, model, pretrained, None, None, methods, preset=preset
        )
    )
    if bank:
        pairs = [b.split("=", 1) for b in bank]
        if any(len(p) != 2 or not p[1] for p in pairs):
            _fail(f"--bank {bank}: write METHOD=BANK_ID, e.g. --bank dclip=0123456789abcdef")
        update = {**(cfg.classify.banks or {}), **dict(pairs)}
        classify_cfg = _guard(lambda: ClassifyConfig(**{**cfg.classify.model_dump(), "banks": update}))
        cfg = cfg.model_copy(update={"classify": classify_cfg})
    textbank = textbank or _newest_bank(cfg)
    start = time.perf_counter()
    kwargs = {
        "workdir": cfg.workdir,
        "run_name": cfg.run_name,
        "params": cfg.classify,
        "config": cfg.model_dump(mode="json"),
    }
    result = _guard(lambda: classify_flow(cfg.dataset, cfg.model, textbank, list(cfg.methods), **kwargs))
    _report(cfg, result, time.perf_counter() - start)


@app.command()
def fewshot(
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    source: Source = None,
    kind: Kind = None,
    model: Model = None,
    pretrained: Pretrained = None,
    shots: Annotated[str | None, typer.Option(help="comma-separated shots per class, e.g. 1,2,4,8,16")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated support-set seeds, e.g. 1,2,3")] = None,
    augment_views: Annotated[int | None, typer.Option(help="augmented views averaged per support image")] = None,
    search: Annotated[str | None, typer.Option(help="grid (alpha/beta on val) | fixed (--alpha/--beta)")] = None,
    alpha: Annotated[float | None, typer.Option(help="cache weight in fixed mode")] = None,
    beta: Annotated[float | None, typer.Option(help="cache sharpness in fixed mode")] = None,
    adapter: AdapterId = None,
    reingest: Reingest = False,
    replace_dataset: ReplaceDataset = False,
    split_ratio: SplitRatio = None,
    preset: Preset = None,
    llm_timeout: LLMTimeout = None,
    llm_concurrency: LLMConcurrency = None,
    llm_max_tokens: LLMMaxTokens = None,
) -> None:
    """Few-shot runs over shots x seeds (prototype, Tip-Adapter, CODER-Adapter, Tip-X); needs train/val/test splits."""

    def ints(v: str | None) -> list[int] | None:
        return [int(x) for x in v.split(",")] if v else None

    cfg = _guard(
        lambda: build_config(
            config,
            **{
                "workdir": workdir, "dataset.name": dataset, "dataset.source": source, "dataset.kind": kind,
                "model.name": model, "model.pretrained": pretrained, "fewshot.shots": ints(shots),
                "fewshot.seeds": ints(seeds), "fewshot.augment_views": augment_views, "fewshot.search": search,
                "fewshot.alpha": alpha, "fewshot.beta": beta, "model.adapter": adapter,
                "dataset.reingest": reingest or None, "dataset.replace": replace_dataset or None,
                "dataset.split_ratio": split_ratio, "preset": preset,
                **llm_flags(llm_timeout, llm_concurrency, llm_max_tokens),
            },
        )
    )  # fmt: skip
    splits = [cfg.fewshot.train_split, cfg.fewshot.val_split, cfg.fewshot.test_split]
    cfg = _guard(lambda: preflight(cfg, ingests=splits))
    start = time.perf_counter()
    from coderflow.flows.fewshot import fewshot as fewshot_flow

    result = _guard(lambda: fewshot_flow(cfg))
    table = Table(title=f"few-shot run {result['run_id']} (test top-1 over seeds)")
    for col in ("method", "shots", "seeds", "mean", "std"):
        table.add_column(col)
    for r in result["table"]:
        table.add_row(r["method"], str(r["shots"]), str(r["seeds"]), str(r["top1_mean"]), str(r["top1_std"]))
    console.print(table)
    console.print(f"finished in {time.perf_counter() - start:.1f} s; plot: {result['plot']}")
    _note_random_weights(cfg)


adapter_app = typer.Typer(help="IMO adapters: train on a labeled collection, measure intra-modal overlap.")
app.add_typer(adapter_app, name="adapter")


@adapter_app.command("train")
def adapter_train_cmd(
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    source: Source = None,
    kind: Kind = None,
    split: Annotated[str | None, typer.Option(help="training split (default train)")] = None,
    model: Model = None,
    pretrained: Pretrained = None,
    epochs: Annotated[int | None, typer.Option(help="passes over the collection (paper: 1)")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate (paper: 8e-3)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per step (paper: 128)")] = None,
) -> None:
    """Train bottleneck adapters in the image encoder with cross-entropy; checkpoints per epoch, resumable."""
    flags = {
        "workdir": workdir, "dataset.name": dataset, "dataset.source": source, "dataset.kind": kind,
        "adapter.train_split": split, "model.name": model, "model.pretrained": pretrained, "adapter.epochs": epochs,
        "adapter.lr": lr, "adapter.batch_size": batch_size,
    }  # fmt: skip
    cfg = _guard(lambda: build_config(config, **flags))
    cfg = _guard(lambda: preflight(cfg, ingests=[cfg.adapter.train_split]))
    from coderflow.flows.adapter import adapter_train

    out = _guard(lambda: adapter_train(cfg))
    console.print_json(json.dumps(out))
    console.print(f"use it with --adapter {out['adapter_id']} (fewshot, embed, adapter overlap)")


@adapter_app.command("overlap")
def adapter_overlap_cmd(
    adapter: AdapterId,
    config: ConfigFile = None,
    workdir: Workdir = None,
    dataset: Dataset = None,
    source: Source = None,
    kind: Kind = None,
    split: Split = None,
    model: Model = None,
    pretrained: Pretrained = None,
) -> None:
    """Overlap of same- vs different-class cosine distributions, original vs adapted image features."""
    flags = {
        "workdir": workdir, "dataset.name": dataset, "dataset.source": source, "dataset.kind": kind,
        "dataset.split": split, "model.name": model, "model.pretrained": pretrained, "model.adapter": adapter,
    }  # fmt: skip
    cfg = _guard(lambda: build_config(config, **flags))
    cfg = _guard(lambda: preflight(cfg, ingests=[cfg.dataset.split]))
    from coderflow.flows.adapter import adapter_overlap

    out = _guard(lambda: adapter_overlap(cfg))
    table = Table(title=f"intra-modal overlap, run {out['run_id']}")
    for col in ("model_id", "metric", "value"):
        table.add_column(col)
    for r in out["metrics"]:
        table.add_row(r["model_id"], r["metric"], f"{r['value']:.4f}")
    console.print(table)


@app.command()
def serve(
    config: ConfigFile = None,
    workdir: Workdir = None,
    cron: Annotated[str, typer.Option(help="cron schedule of the end-to-end pipeline ('' for none)")] = "0 2 * * *",
    name: Annotated[str, typer.Option(help="deployment name of every served flow")] = "laptop",
) -> None:
    """Serve every flow as a deployment (the pipeline on a cron schedule) until Ctrl-C; runs show in the UI."""
    from coderflow.flows.serve import serve_flows

    cfg = _guard(lambda: _config(config, workdir))
    serve_flows(cfg, name=name, cron=cron or None)


@app.command("query")
def query_cmd(
    sql: Annotated[str | None, typer.Argument(help="SQL (read-only) over the views")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="read the SQL from a file")] = None,
    canned: Annotated[str | None, typer.Option(help="a bundled question, e.g. accuracy_per_method")] = None,
    workdir: Workdir = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Answer read-only SQL over texts, text_embeddings, image_embeddings, coder, predictions, metrics, runs."""
    given = [x for x in (sql, file, canned) if x]
    if len(given) != 1:
        _fail("give exactly one of: SQL as an argument, --file x.sql, or --canned NAME")
    if file is not None and not file.is_file():
        _fail(f"SQL file {str(file)!r} not found: pass the path of a .sql file")
    text = sql or (file.read_text() if file else sql_file(canned))
    table = _guard(lambda: query(Layout.at(workdir), text))
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
    elif fmt == "json":
        console.print_json(json.dumps(table.to_pylist(), default=str))
    else:
        print_table(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
