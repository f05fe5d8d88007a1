"""Reading stored embeddings and text banks into aligned numpy arrays for computation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coderflow.storage.integrity import intact, require_intact
from coderflow.storage.layout import Layout, StoragePath, text_model_id
from coderflow.storage.parquet_io import read_table, read_tables
from coderflow.storage.schemas import IMAGE_EMBEDDINGS, TEXT_EMBEDDINGS
from coderflow.storage.shards import SHARD_ERROR_SUFFIX, DamagedFile, split_image_hashes, split_shards


def list_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column of equal-length rows as an (N, D) float32 matrix, without a Python loop."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), -1)


@dataclass(frozen=True)
class ImageSet:
    """Successfully embedded images of one split: keys, labels (-1 when missing) and the embedding matrix."""

    keys: list[str]
    labels: np.ndarray
    x: np.ndarray
    n_errors: int
    hashes: list[str] | None = None  # each image's content hash (the split's _images.json); None when unknown


def image_parts(layout: Layout, model_id: str, dataset: str, split: str) -> list[StoragePath]:
    """The image-embedding files of exactly the split's current shards (matched by content hash), in shard order.

    Files of shards that are no longer in the split are never returned, whatever their name; a shard without its
    file is an error that says how many are missing.
    """
    parts = [
        layout.image_embedding_part(model_id, dataset, split, s.name, s.sha256)
        for s in split_shards(layout, dataset, split)
    ]
    missing = [p for p in parts if not intact(p)]  # a damaged part is moved aside: missing
    if missing or not parts:
        raise FileNotFoundError(
            f"{len(missing)} of {len(parts)} shards of {dataset}/{split} have no image embeddings with model "
            f"{model_id}: run `coderflow embed --dataset {dataset} --split {split}` first"
        )
    return parts


def load_images(layout: Layout, model_id: str, dataset: str, split: str) -> ImageSet:
    """The split's successfully embedded images (see image_parts: only its current shards)."""
    parts = image_parts(layout, model_id, dataset, split)
    table = read_tables(parts, IMAGE_EMBEDDINGS, ["sample_key", "label", "embedding", "status"])
    is_ok = pc.equal(table["status"], "ok")
    ok = table.filter(is_ok)
    labels = ok["label"].fill_null(-1).to_numpy().astype(np.int64)
    hashes = _image_hashes(layout, dataset, split, table["sample_key"].to_pylist(), is_ok)
    x = list_matrix(ok["embedding"])
    return ImageSet(ok["sample_key"].to_pylist(), labels, x, table.num_rows - ok.num_rows, hashes)


def _image_hashes(layout: Layout, dataset: str, split: str, keys: list[str], ok: pa.ChunkedArray) -> list[str] | None:
    """The content hash of each ok row's image: `_images.json` lists one per sample in sample order, and the
    embedding rows are the samples in that order; None when they cannot be aligned (a damaged shard or hash list,
    a sample without an image, a split ingested before the list existed)."""
    try:
        hashes = split_image_hashes(layout, dataset, split)
    except DamagedFile:
        return None
    if len(hashes) != len(keys) or any(k.endswith(SHARD_ERROR_SUFFIX) for k in keys):
        return None
    return [h for h, keep in zip(hashes, ok.to_pylist(), strict=True) if keep]


@dataclass(frozen=True)
class TextSet:
    """A text bank's rows with their embeddings, in the bank's row order."""

    text_ids: list[str]
    class_index: np.ndarray
    text_type: np.ndarray
    other_class_index: np.ndarray
    class_names: list[str]
    t: np.ndarray
    source: np.ndarray | None = None  # where each row came from (`import:cupl:...` marks CuPL sentences)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def load_texts(layout: Layout, textbank_id: str, model_id: str) -> TextSet:
    bank = read_table(
        require_intact(layout.textbank_file(textbank_id), "run `coderflow texts` to build the bank again")
    )
    parts = [p for p in sorted(layout.text_embedding_dir(text_model_id(model_id)).glob("part-*.parquet")) if intact(p)]
    emb = read_tables(parts, TEXT_EMBEDDINGS, ["text_id", "embedding"])
    index = {tid: i for i, tid in enumerate(emb["text_id"].to_pylist())}
    ids = bank["text_id"].to_pylist()
    missing = [t for t in ids if t not in index]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} texts of bank {textbank_id} have no {model_id} embedding: run `coderflow embed` first"
        )
    t = list_matrix(emb["embedding"])[[index[i] for i in ids]]
    ci = bank["class_index"].to_numpy().astype(np.int64)
    names: dict[int, str] = dict(zip(ci.tolist(), bank["class_name"].to_pylist(), strict=True))
    return TextSet(
        ids,
        ci,
        np.asarray(bank["text_type"].to_pylist()),
        bank["other_class_index"].fill_null(-1).to_numpy().astype(np.int64),
        [names[i] for i in range(max(names) + 1)] if names else [],
        t,
        np.asarray(bank["source"].to_pylist(), dtype=object),
    )
