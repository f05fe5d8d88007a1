"""The pipeline flows: ingest-dataset, embed-images, text-bank, build-coder, classify, and pipeline composing them."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from coderflow.config import ClassifyConfig, CoderConfig, DatasetConfig, ModelConfig, PipelineConfig, TextsConfig
from coderflow.flows.bookkeeping import (
    flow_run_id,
    record_inputs,
    recorded_run,
    refresh_unless_subflow,
    refreshed_on_error,
    resolved_workdir,
    timed,
)
from coderflow.flows.naming import run_namer, tag_flow_run
from coderflow.flows.runners import THREADS, holds_workdir_lock, subflows_share_heartbeat, with_runner
from coderflow.results import (
    ClassifyResult,
    CoderResult,
    EmbedResult,
    IngestResult,
    PipelineResult,
    TextBankResult,
)
from coderflow.storage.runs import new_run_id
from coderflow.tasks.classify.task import classify_zero_shot
from coderflow.tasks.coder.task import build_coder_shard
from coderflow.tasks.embed.task import (
    describe_model,
    embed_shard,
    embed_text_bank,
    list_image_parts,
    list_split_shards,
    summarize_shards,
)
from coderflow.tasks.evaluate.task import evaluate_run
from coderflow.tasks.ingest.task import ingest_split
from coderflow.tasks.report.task import publish_metrics, report_run, results_with_progress
from coderflow.tasks.runs import record_parent_run
from coderflow.tasks.texts.task import build_text_bank, build_waffle_bank, import_text_bank


def bank_reads_images(config: PipelineConfig) -> bool:
    """Whether the text bank reads the split's image embeddings (one-vs-one pairs 'consulted' or 'confused')."""
    t = config.texts
    return "ovo" in t.types and t.ovo_pairs in ("consulted", "confused") and t.ovo_budget > 0


@flow(name="ingest-dataset", flow_run_name=run_namer(with_model=False), on_running=[tag_flow_run])
@holds_workdir_lock
def ingest_dataset(dataset: DatasetConfig, workdir: str | None = None) -> IngestResult:
    """Write a dataset split as WebDataset shards under the work directory."""
    return ingest_split(dataset, resolved_workdir(workdir))


@flow(
    name="embed-images",
    task_runner=ThreadPoolTaskRunner(max_workers=THREADS),
    flow_run_name=run_namer(),
    on_running=[tag_flow_run],
)
@holds_workdir_lock
def embed_images(
    dataset: DatasetConfig, model: ModelConfig, workdir: str | None = None, max_failure_rate: float = 0.1
) -> EmbedResult:
    """Embed every shard of a split (one mapped task per shard; finished shards are skipped)."""
    workdir = resolved_workdir(workdir)
    shards = list_split_shards(dataset.name, dataset.split, workdir)  # (path, sha256, samples) per shard
    futures = embed_shard.map(
        [s[0] for s in shards], [s[1] for s in shards], unmapped(dataset.name), unmapped(dataset.split),
        unmapped(model), unmapped(workdir), [s[2] for s in shards], unmapped(sum(s[2] for s in shards)),
    )  # fmt: skip
    done = results_with_progress(futures, f"embed {dataset.name}/{dataset.split}", "images")
    result = summarize_shards(done, max_failure_rate)
    refresh_unless_subflow(workdir)
    return result


@flow(name="text-bank", flow_run_name=run_namer(), on_running=[tag_flow_run])
@holds_workdir_lock
def text_bank(
    dataset: DatasetConfig,
    model: ModelConfig,
    texts: TextsConfig | None = None,
    workdir: str | None = None,
    templates: list[str] | None = None,
    classify: ClassifyConfig | None = None,
) -> TextBankResult:
    """Generate the dataset's text bank and embed the texts this model has not embedded yet (`classify`: CODER*'s
    rule, which picks the one-vs-one pairs it will consult)."""
    workdir = resolved_workdir(workdir)
    bank = build_text_bank(dataset.name, dataset.split, model, texts or TextsConfig(), workdir, templates, classify)
    embedded = embed_text_bank(bank.textbank_id, model, workdir)
    refresh_unless_subflow(workdir)
    return TextBankResult(
        bank.textbank_id, bank.n_texts, embedded.new, bank.n_classes, bank.summary, usage=bank.usage, reused=bank.reused
    )


@flow(name="import-texts", flow_run_name=run_namer(), on_running=[tag_flow_run])
@holds_workdir_lock
def import_texts(
    dataset: DatasetConfig,
    model: ModelConfig,
    path: str,
    fmt: str,
    texts: TextsConfig | None = None,
    workdir: str | None = None,
    key: str | None = None,
) -> TextBankResult:
    """A text bank from a published file (DCLIP/WaffleCLIP descriptors, CuPL prompts, CLIP_benchmark templates),
    embedded with the model; use it for a method with classify.banks (e.g. {dclip: <id>})."""
    workdir = resolved_workdir(workdir)
    bank = import_text_bank(dataset.name, path, fmt, model, texts or TextsConfig(), workdir, key)
    embedded = embed_text_bank(bank.textbank_id, model, workdir)
    refresh_unless_subflow(workdir)
    return TextBankResult(bank.textbank_id, bank.n_texts, embedded.new, report=bank.report)


@flow(
    name="build-coder",
    task_runner=ThreadPoolTaskRunner(max_workers=THREADS),
    flow_run_name=run_namer(),
    on_running=[tag_flow_run],
)
@holds_workdir_lock
def build_coder(
    dataset: DatasetConfig,
    model: ModelConfig,
    textbank_id: str,
    coder: CoderConfig | None = None,
    workdir: str | None = None,
) -> CoderResult:
    """Materialise CODER vectors for every embedded shard of a split (one mapped task per shard)."""
    workdir = resolved_workdir(workdir)
    mid = describe_model(model, workdir).model_id
    parts = list_image_parts(mid, dataset.name, dataset.split, workdir)
    futures = build_coder_shard.map(
        parts, unmapped(textbank_id), unmapped(mid), unmapped(dataset.name), unmapped(dataset.split),
        unmapped(coder or CoderConfig()), unmapped(workdir), unmapped(model.device),
    )  # fmt: skip
    results = results_with_progress(futures, f"coder {dataset.name}/{dataset.split}", "images")
    refresh_unless_subflow(workdir)
    return CoderResult(len(results), sum(r.skipped for r in results), sum(r.rows for r in results))


@flow(name="classify", flow_run_name=run_namer(with_methods=True), on_running=[tag_flow_run])
@holds_workdir_lock
def classify(
    dataset: DatasetConfig,
    model: ModelConfig,
    textbank_id: str,
    methods: list[str],
    workdir: str | None = None,
    run_name: str | None = None,
    classify: ClassifyConfig | None = None,
    config: dict[str, Any] | None = None,
) -> ClassifyResult:
    """Classify with every method over the stored embeddings, evaluate, record the run and refresh DuckDB."""
    workdir = resolved_workdir(workdir)
    classify = classify or ClassifyConfig()
    run_id = new_run_id(run_name)
    described = describe_model(model, workdir)
    mid = described.model_id
    waffle_ids: list[str] = []
    if "waffle" in methods:  # WaffleCLIP's prompts are seeded banks of their own (one per rep), embedded like any text
        for rep in range(classify.waffle_reps):
            waffle_ids.append(build_waffle_bank(dataset.name, model, classify, workdir, classify.waffle_seed + rep))
            embed_text_bank(waffle_ids[-1], model, workdir)
    for other in dict.fromkeys((classify.banks or {}).values()):  # banks of some methods (imported ones, say)
        embed_text_bank(other, model, workdir)
    record = {
        "flow": "classify",
        "started_at": datetime.now(UTC),
        "config": config
        or {
            "dataset": dataset.model_dump(),
            "model": model.model_dump(),
            "methods": methods,
            "classify": classify.model_dump(mode="json"),
        },
        "dataset": dataset.name,
        "model_id": mid,
        "textbank_id": textbank_id,
        "extra": {"preprocess": described.preprocess, "waffle_textbank_ids": waffle_ids},
    }
    with recorded_run(run_id, workdir, record) as extra:
        predictions = classify_zero_shot(
            run_id, dataset.name, dataset.split, mid, textbank_id, list(methods), workdir, classify, waffle_ids,
            classify.banks, device=model.device,
        )  # fmt: skip
        counters = [
            {"method": m, "metric": k, "value": float(v)}
            for m, info in predictions.methods.items()
            for k, v in info.items()
        ]
        metrics = evaluate_run(run_id, mid, predictions.n_classes, workdir, counters)
        extra["counts"] = asdict(predictions)  # the run record is JSON
        extra["split_id"] = predictions.split_id  # the images it scored: re-scoring (`load_run`) checks it
    report_run(run_id, dataset.name, workdir)
    return ClassifyResult(
        run_id,
        metrics.top1,
        predictions.n_samples,
        predictions.n_errors,
        predictions.n_classes,
        predictions.methods,
        flow_run_id(),
    )


@flow(name="pipeline", flow_run_name=run_namer(with_methods=True), on_running=[tag_flow_run])
@subflows_share_heartbeat
@holds_workdir_lock
def pipeline(config: PipelineConfig) -> PipelineResult:
    """End to end: ingest, embed images, text bank, CODER, classify with every method, evaluate, DuckDB."""
    workdir = resolved_workdir(config.workdir)
    with refreshed_on_error(workdir):
        return _stages(config, workdir)


def _stages(config: PipelineConfig, workdir: str) -> PipelineResult:
    ds, model = config.dataset, config.model
    stages: dict[str, float] = {}
    started = datetime.now(UTC)
    with timed(stages, "ingest"):
        ingest_dataset(ds, workdir)

    def embed() -> EmbedResult:
        with timed(stages, "embed"):
            return with_runner(embed_images, config)(ds, model, workdir, config.max_failure_rate)

    def bank() -> TextBankResult:
        with timed(stages, "texts"):
            templates = list(config.templates) if config.templates else None
            return text_bank(ds, model, config.texts, workdir, templates, config.classify)

    if bank_reads_images(config):  # one-vs-one pairs from the images' scores: embed first
        images, texts = embed(), bank()
    else:  # neither needs the other: the bank (LLM requests, WordNet) runs while the images are embedded
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(contextvars.copy_context().run, bank)
            images = embed()
            texts = pending.result()
    with timed(stages, "coder"):
        coder = with_runner(build_coder, config)(ds, model, texts.textbank_id, config.coder, workdir)
    with timed(stages, "classify"):
        run = classify(
            ds, model, texts.textbank_id, list(config.methods), workdir=workdir, run_name=config.run_name,
            classify=config.classify, config=config.model_dump(mode="json"),
        )  # fmt: skip
        # the run is the pipeline's: its flow, whole duration and flow run (classify's is kept in the record)
        record_parent_run(run.run_id, workdir, flow="pipeline", started_at=started, flow_run_id=flow_run_id())
        record_inputs(run.run_id, config)
    # the parent run shows the metrics too, not only its classify sub-flow
    publish_metrics(run.run_id, ds.name, workdir)
    return PipelineResult(run.run_id, run.top1, images, texts, coder, run, stages, flow_run_id())
