"""Prefect tasks: embed one image shard (skipped when its Parquet exists) and a text bank (new texts only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from prefect import get_run_logger, task

from coderflow.config import ModelConfig
from coderflow.storage.arrays import image_parts
from coderflow.storage.layout import Layout, file_sha256, text_model_id
from coderflow.storage.parquet_io import read_table, write_table
from coderflow.storage.schemas import IMAGE_EMBEDDINGS
from coderflow.storage.shards import iter_samples, read_lines, split_shards
from coderflow.tasks import retry_transient
from coderflow.tasks.embed.encode import decode_workers, embed_samples
from coderflow.tasks.embed.model import configured_model_id, load_configured
from coderflow.tasks.embed.text_store import TextStore


@task(name="embed-shard", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def embed_shard(
    shard: str, shard_hash: str, dataset: str, split: str, model: ModelConfig, workdir: str
) -> dict[str, Any]:
    """Embed every sample of one shard into one Parquet file keyed by the shard's content hash and the model; its
    atomic presence marks the shard done. A shard whose bytes no longer match its ingest record is refused."""
    layout = Layout.at(workdir)
    mid = configured_model_id(model, workdir)
    out = layout.image_embedding_part(mid, dataset, split, shard, shard_hash)
    if out.exists():
        status = read_table(out, ["status"])["status"]
        n_err = pc.sum(pc.equal(status, "error")).as_py() or 0
        return {"path": str(out), "rows": len(status), "errors": n_err, "skipped": True}
    actual = file_sha256(shard)
    if actual != shard_hash:
        raise ValueError(
            f"shard {shard} changed since it was ingested (sha256 {actual[:12]}..., recorded {shard_hash[:12]}...): "
            f"re-run `coderflow ingest --dataset {dataset} --split {split} --reingest`"
        )
    lm = load_configured(model, workdir)
    names_file = layout.classnames_file(dataset)
    n_classes = len(read_lines(names_file)) if names_file.exists() else None
    meta = {"dataset": dataset, "split": split, "shard": Path(shard).stem, "shard_hash": shard_hash}
    workers = decode_workers(model.decode_workers)
    table = embed_samples(iter_samples(shard), lm, model.batch_size, meta, n_classes=n_classes, workers=workers)
    write_table(table, out, IMAGE_EMBEDDINGS)
    errors = table.filter(pc.equal(table["status"], "error"))
    log = get_run_logger()
    for key, err in zip(errors["sample_key"].to_pylist(), errors["error"].to_pylist(), strict=True):
        log.warning("shard %s sample %s: %s", out.stem, key, err)
    return {"path": str(out), "rows": table.num_rows, "errors": errors.num_rows, "skipped": False}


@task(name="embed-text-bank")
def embed_text_bank(textbank_id: str, model: ModelConfig, workdir: str) -> dict[str, Any]:
    """Embed the bank's texts that this model has not embedded yet (in any bank); returns counts."""
    layout = Layout.at(workdir)
    text_mid = text_model_id(configured_model_id(model, workdir))  # adapters change only the image encoder
    bank = read_table(layout.textbank_file(textbank_id), ["text_id", "text", "truncated"])
    store = TextStore(layout, text_mid, lambda: load_configured(model, workdir))  # loaded only when needed
    known = store.stored_ids()
    todo = {tid: text for tid, text in zip(bank["text_id"].to_pylist(), bank["text"].to_pylist(), strict=True)}
    todo = {tid: text for tid, text in todo.items() if tid not in known}
    store.add(todo)  # known to be missing: no lookup of stored vectors
    store.flush()
    context_length = load_configured(model, workdir).context_length if todo else None
    n_trunc = sum(bool(v) for v in bank["truncated"].to_pylist())
    get_run_logger().info(
        "text bank %s on %s: %d new embeddings, %d reused, %d truncated (context %s tokens)",
        textbank_id, text_mid, len(todo), bank.num_rows - len(todo), n_trunc, context_length or "-",
    )  # fmt: skip
    return {"model_id": text_mid, "new": len(todo), "reused": bank.num_rows - len(todo), "truncated": n_trunc}


@task(name="list-shards")
def list_split_shards(dataset: str, split: str, workdir: str) -> list[tuple[str, str]]:
    """(path, sha256) of every shard of an ingested split, as its ingest marker records them."""
    shards = split_shards(Layout.at(workdir), dataset, split)
    if not shards:
        raise FileNotFoundError(f"no shards for {dataset}/{split} in {workdir}: run `coderflow ingest` first")
    return [(s.path, s.sha256) for s in shards]


@task(name="list-embedded-shards")
def list_image_parts(model_id: str, dataset: str, split: str, workdir: str) -> list[str]:
    """The image-embedding files of the split's current shards (by content hash) with this model."""
    return [str(p) for p in image_parts(Layout.at(workdir), model_id, dataset, split)]


@task(name="check-failures")
def summarize_shards(results: list[dict[str, Any]], max_failure_rate: float) -> dict[str, Any]:
    """Totals over shards; fails the stage when the share of rows that failed exceeds `max_failure_rate`."""
    rows = sum(r["rows"] for r in results)
    errors = sum(r["errors"] for r in results)
    skipped = sum(r["skipped"] for r in results)
    if rows and errors / rows > max_failure_rate:
        raise RuntimeError(
            f"{errors} of {rows} images failed to embed ({errors / rows:.1%} > max_failure_rate {max_failure_rate}): "
            "see the `error` column of image_embeddings, fix the data or raise max_failure_rate"
        )
    return {"shards": len(results), "shards_skipped": skipped, "rows": rows, "errors": errors}


@task(name="describe-model")
def describe_model(model: ModelConfig, workdir: str) -> dict[str, Any]:
    """Model id, preprocess config and text context of a model, for run manifests."""
    lm = load_configured(model, workdir)
    return {"model_id": lm.model_id, "preprocess": lm.preprocess_config(), "context_length": lm.context_length}
