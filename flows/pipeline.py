"""The pipeline flows: ingest-dataset, embed-images, embed-texts, classify, and pipeline composing them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from prefect import flow, unmapped

from coderflow.config import DatasetConfig, ModelConfig, PipelineConfig
from coderflow.storage.layout import Layout
from coderflow.storage.runs import new_run_id
from coderflow.tasks.classify.task import classify_zero_shot
from coderflow.tasks.embed.task import describe_model, embed_shard, embed_text_bank, list_split_shards, summarize_shards
from coderflow.tasks.evaluate.task import evaluate_run
from coderflow.tasks.ingest.task import ingest_split
from coderflow.tasks.runs import record_run, refresh_database
from coderflow.tasks.texts.task import build_name_bank


@flow(name="ingest-dataset")
def ingest_dataset(dataset: DatasetConfig, workdir: str | None = None) -> dict[str, Any]:
    """Write a dataset split as WebDataset shards under the work directory."""
    return ingest_split(dataset, str(Layout.at(workdir).root))


@flow(name="embed-images")
def embed_images(
    dataset: DatasetConfig, model: ModelConfig, workdir: str | None = None, max_failure_rate: float = 0.1
) -> dict[str, Any]:
    """Embed every shard of a split (one mapped task per shard; finished shards are skipped)."""
    root = str(Layout.at(workdir).root)
    shards = list_split_shards(dataset.name, dataset.split, root)
    futures = embed_shard.map(shards, unmapped(dataset.name), unmapped(dataset.split), unmapped(model), unmapped(root))
    return summarize_shards([f.result() for f in futures], max_failure_rate)


@flow(name="embed-texts")
def embed_texts(
    dataset: DatasetConfig, model: ModelConfig, workdir: str | None = None, templates: list[str] | None = None
) -> dict[str, Any]:
    """Build the dataset's class-name text bank and embed the texts this model has not embedded yet."""
    root = str(Layout.at(workdir).root)
    bank = build_name_bank(dataset.name, model, root, templates)
    return {**bank, **embed_text_bank(bank["textbank_id"], model, root)}


@flow(name="classify")
def classify(
    dataset: DatasetConfig,
    model: ModelConfig,
    textbank_id: str,
    methods: list[str],
    workdir: str | None = None,
    run_name: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Classify with every method over the stored embeddings, evaluate, record the run and refresh DuckDB."""
    root = str(Layout.at(workdir).root)
    run_id = new_run_id(run_name)
    started = datetime.now(timezone.utc)
    described = describe_model(model)
    mid = described["model_id"]
    record = {
        "flow": "classify",
        "started_at": started,
        "config": config or {"dataset": dataset.model_dump(), "model": model.model_dump(), "methods": methods},
        "dataset": dataset.name,
        "model_id": mid,
        "textbank_id": textbank_id,
        "extra": {"preprocess": described["preprocess"]},
    }
    record_run(run_id, root, status="running", **record)
    try:
        result = classify_zero_shot(run_id, dataset.name, dataset.split, mid, textbank_id, list(methods), root)
        metrics = evaluate_run(run_id, mid, result["n_classes"], root)
    except BaseException:
        record_run(run_id, root, status="failed", **record)
        refresh_database(root)
        raise
    record["extra"]["counts"] = result
    record_run(run_id, root, status="completed", **record)
    refresh_database(root)
    return {"run_id": run_id, "top1": metrics["top1"], **result}


@flow(name="pipeline")
def pipeline(config: PipelineConfig) -> dict[str, Any]:
    """End to end: ingest, embed images and texts, classify with every method, evaluate, load into DuckDB."""
    root = str(Layout.at(config.workdir).root)
    ingest_dataset(config.dataset, root)
    images = embed_images(config.dataset, config.model, root, config.max_failure_rate)
    texts = embed_texts(config.dataset, config.model, root, list(config.templates) if config.templates else None)
    run = classify(
        config.dataset, config.model, texts["textbank_id"], list(config.methods), root, config.run_name,
        config.model_dump(mode="json"),
    )  # fmt: skip
    return {**run, "images": images, "texts": texts}
