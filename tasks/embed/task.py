"""Prefect tasks: embed one image shard (skipped when its Parquet exists) and a text bank (new texts only)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from coderflow.config import ModelConfig
from coderflow.results import EmbeddedTexts, EmbedResult, ModelDescription, ShardResult
from coderflow.storage.arrays import image_parts
from coderflow.storage.integrity import intact
from coderflow.storage.layout import Layout, file_sha256, text_model_id
from coderflow.storage.parquet_io import read_table, write_table
from coderflow.storage.schemas import IMAGE_EMBEDDINGS
from coderflow.storage.shards import iter_samples, read_class_file, split_shards
from coderflow.tasks import named_after_shard, retry_transient, shard_name
from coderflow.tasks.embed.encode import (
    MIN_CORES_FOR_WORKERS,
    MIN_IMAGES_FOR_WORKERS,
    DecodeLimits,
    decode_workers,
    embed_samples,
)
from coderflow.tasks.embed.model import configured_model_id, load_configured
from coderflow.tasks.embed.text_store import TextStore

PROGRESS_EVERY_S = 2.0  # each progress update is one API call: at most one per shard every 2 s


class BatchProgress:
    """A progress artifact (Prefect UI) of one shard's embedding, moved on per batch with images/s: updated at most
    every `every` seconds and once at the end (`finish`), so the embedding loop pays about one API call per 2 s."""

    def __init__(
        self,
        what: str,
        total: int | None,
        every: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.what, self.total, self.every, self.clock = what, total, every, clock
        self.done = 0
        self.start = self.last = clock()
        self.artifact_id = create_progress_artifact(0.0, description=self.describe())

    def describe(self) -> str:
        """'embed demo-test-000003: 64 of 200 images, 41.3 images/s' (the mean rate since the shard started)."""
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        of = f" of {self.total}" if self.total else ""
        return f"{self.what}: {self.done}{of} images, {rate:.1f} images/s"

    def __call__(self, n: int) -> None:
        """`n` more images embedded (an `embed_samples` on_batch callback)."""
        self.done += n
        if self.clock() - self.last >= self.every:
            self._update()

    def finish(self) -> None:
        """The shard is done: 100% of the images it held, and the final rate."""
        self.total = self.done
        self._update(done=True)

    def _update(self, done: bool = False) -> None:
        self.last = self.clock()
        share = 1.0 if done else min(1.0, self.done / self.total) if self.total else 0.0
        try:
            update_progress_artifact(self.artifact_id, 100.0 * share, description=self.describe())
        except Exception as exc:  # progress is for people watching: never a reason to fail a shard
            get_run_logger().debug("progress artifact not updated: %s", exc)


@task(
    name="embed-shard",
    task_run_name=named_after_shard("embed-shard", "shard"),
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_transient,
)
def embed_shard(
    shard: str,
    shard_hash: str,
    dataset: str,
    split: str,
    model: ModelConfig,
    workdir: str,
    samples: int | None = None,
    split_samples: int | None = None,
) -> ShardResult:
    """Embed every sample of one shard into one Parquet file keyed by the shard's content hash and the model; its
    atomic presence marks the shard done. A shard whose bytes no longer match its ingest record is refused. A
    progress artifact follows the batches (`samples`: the shard's sample count, from its ingest record). Images are
    decoded by worker processes only when the split (`split_samples` images) is large enough to repay starting them
    (encode.decode_workers)."""
    layout = Layout.at(workdir)
    mid = configured_model_id(model, workdir)
    out = layout.image_embedding_part(mid, dataset, split, shard, shard_hash)
    if intact(out):  # a damaged file is moved aside and embedded again
        status = read_table(out, ["status"])["status"]
        n_err = pc.sum(pc.equal(status, "error")).as_py() or 0
        return ShardResult(str(out), len(status), skipped=True, errors=n_err)
    actual = file_sha256(shard)
    if actual != shard_hash:
        raise ValueError(
            f"shard {shard} changed since it was ingested (sha256 {actual[:12]}..., recorded {shard_hash[:12]}...): "
            f"re-run `coderflow ingest --dataset {dataset} --split {split} --reingest`"
        )
    lm = load_configured(model, workdir)
    names = read_class_file(layout.classnames_file(dataset))
    n_classes = len(names) if names is not None else None
    meta = {"dataset": dataset, "split": split, "shard": Path(shard).stem, "shard_hash": shard_hash}
    workers = decode_workers(model.decode_workers, split_samples)
    if workers == 0 and model.decode_workers is None and split_samples is not None:
        get_run_logger().info(
            "shard %s: decoding in this process, no worker processes started (split of %d images; they start from "
            "%d images on more than %d cores)",
            shard_name(shard), split_samples, MIN_IMAGES_FOR_WORKERS, MIN_CORES_FOR_WORKERS,
        )  # fmt: skip
    progress = BatchProgress(f"embed {shard_name(shard)}", samples)
    limits = DecodeLimits(model.max_image_bytes, model.max_image_pixels)
    table = embed_samples(
        iter_samples(shard), lm, model.batch_size, meta, n_classes=n_classes, workers=workers, on_batch=progress,
        limits=limits,
    )  # fmt: skip
    progress.finish()
    write_table(table, out, IMAGE_EMBEDDINGS)
    errors = table.filter(pc.equal(table["status"], "error"))
    log = get_run_logger()
    for key, err in zip(errors["sample_key"].to_pylist(), errors["error"].to_pylist(), strict=True):
        log.warning("shard %s sample %s: %s", out.stem, key, err)
    return ShardResult(str(out), table.num_rows, skipped=False, errors=errors.num_rows)


@task(name="embed-text-bank")
def embed_text_bank(textbank_id: str, model: ModelConfig, workdir: str) -> EmbeddedTexts:
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
    return EmbeddedTexts(text_mid, new=len(todo), reused=bank.num_rows - len(todo), truncated=n_trunc)


@task(name="list-shards")
def list_split_shards(dataset: str, split: str, workdir: str) -> list[tuple[str, str, int]]:
    """(path, sha256, samples) of every shard of an ingested split, as its ingest marker records them."""
    shards = split_shards(Layout.at(workdir), dataset, split)
    if not shards:
        raise FileNotFoundError(f"no shards for {dataset}/{split} in {workdir}: run `coderflow ingest` first")
    return [(s.path, s.sha256, s.samples) for s in shards]


@task(name="list-embedded-shards")
def list_image_parts(model_id: str, dataset: str, split: str, workdir: str) -> list[str]:
    """The image-embedding files of the split's current shards (by content hash) with this model."""
    return [str(p) for p in image_parts(Layout.at(workdir), model_id, dataset, split)]


@task(name="check-failures")
def summarize_shards(results: list[ShardResult], max_failure_rate: float) -> EmbedResult:
    """Totals over shards; fails the stage when the share of rows that failed exceeds `max_failure_rate`."""
    rows = sum(r.rows for r in results)
    errors = sum(r.errors for r in results)
    skipped = sum(r.skipped for r in results)
    if rows and errors / rows > max_failure_rate:
        raise RuntimeError(
            f"{errors} of {rows} images failed to embed ({errors / rows:.1%} > max_failure_rate {max_failure_rate}): "
            "see the `error` column of image_embeddings, fix the data or raise max_failure_rate"
        )
    return EmbedResult(shards=len(results), shards_skipped=skipped, rows=rows, errors=errors)


@task(name="describe-model")
def describe_model(model: ModelConfig, workdir: str) -> ModelDescription:
    """Model id, preprocess config and text context of a model, for run manifests."""
    lm = load_configured(model, workdir)
    return ModelDescription(lm.model_id, lm.preprocess_config(), lm.context_length)
