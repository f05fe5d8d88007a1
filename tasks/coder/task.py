"""Prefect task: materialise the CODER vectors of one embedded shard to Parquet (skipped when done)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow.compute as pc
from prefect import task

from coderflow.config import CoderConfig
from coderflow.results import ShardResult
from coderflow.storage.arrays import TextSet, list_matrix, load_texts
from coderflow.storage.integrity import intact
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_stream
from coderflow.storage.schemas import CODER
from coderflow.tasks import named_after_shard
from coderflow.tasks.coder.build import coder_table, iter_coder


@lru_cache(maxsize=2)
def _texts(workdir: str, textbank_id: str, model_id: str) -> TextSet:
    return load_texts(Layout.at(workdir), textbank_id, model_id)  # read once per process, not once per shard


@task(name="build-coder-shard", task_run_name=named_after_shard("build-coder-shard", "image_part"))
def build_coder_shard(
    image_part: str,
    textbank_id: str,
    model_id: str,
    dataset: str,
    split: str,
    cfg: CoderConfig,
    workdir: str,
    device: str = "cpu",
) -> ShardResult:
    """Cosines of every successfully embedded image of the shard to every text of the bank, streamed per batch (the
    products on `device`, model.device)."""
    layout = Layout.at(workdir)
    texts = _texts(str(layout.root), textbank_id, model_id)
    top_k = min(cfg.top_k, len(texts.text_ids)) if cfg.format == "sparse" else None
    out = layout.coder_part(model_id, textbank_id, dataset, split, image_part, f"top{top_k}" if top_k else "dense")
    if intact(out):  # a damaged file is moved aside and built again
        return ShardResult(str(out), read_table(out, ["sample_key"]).num_rows, skipped=True)
    table = read_table(image_part, ["sample_key", "label", "embedding", "status", "shard_hash"])
    shard_hash = table["shard_hash"][0].as_py() if table.num_rows else None
    table = table.filter(pc.equal(table["status"], "ok"))
    x = list_matrix(table["embedding"]) if table.num_rows else np.zeros((0, texts.t.shape[1]), np.float32)
    keys, labels = table["sample_key"].to_pylist(), table["label"].fill_null(-1).to_numpy()
    meta = {"dataset": dataset, "split": split, "model_id": model_id, "textbank_id": textbank_id}
    batches = (
        coder_table(
            b, keys[b.start : b.start + len(b)], labels[b.start : b.start + len(b)], **meta, shard_hash=shard_hash
        )
        for b in iter_coder(x, texts.t, cfg.batch_size, top_k, device)
    )
    rows = write_stream(batches, CODER, out, compression="lz4" if top_k else "uncompressed")  # floats: no gain
    return ShardResult(str(out), rows, skipped=False)
