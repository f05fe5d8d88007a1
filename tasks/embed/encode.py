"""Image and text encoding: decoding samples to tensors, batched inference, per-row status for bad images."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from coderflow.storage.schemas import IMAGE_EMBEDDINGS, list_array, repeated
from coderflow.storage.shards import image_entry, label_problem, sample_error, sample_label
from coderflow.tasks.embed.model import LoadedModel


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to RGB (palette/alpha, CMYK and 16-bit images included)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        span = max(float(arr.max() - arr.min()), 1.0)
        img = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
    if img.mode in ("P", "PA", "LA", "RGBA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def _prepare(
    sample: dict[str, Any], preprocess: Any, n_classes: int | None = None
) -> tuple[dict[str, Any], torch.Tensor | None]:
    row = {"sample_key": sample.get("__key__"), "label": sample_label(sample), "status": "ok", "error": None}
    problem = sample_error(sample) or label_problem(sample, n_classes)
    if problem is not None:  # a damaged shard, or a label no class matches: recorded, not embedded
        row.update(status="error", error=problem[:500])
        return row, None
    entry = image_entry(sample)
    if entry is None:
        row.update(status="error", error="sample has no image entry")
        return row, None
    try:
        return row, preprocess(decode_image(entry[1]))
    except Exception as exc:  # any decoder failure is a per-row error, the shard goes on
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
        return row, None


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


@torch.inference_mode()
def encode_images(batch: torch.Tensor, lm: LoadedModel) -> np.ndarray:
    feats = lm.model.encode_image(batch.to(lm.device))
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def _decoded_batches(
    samples: Iterable[dict[str, Any]], prepare: Any, batch_size: int, pool: ThreadPoolExecutor
) -> Iterator[list[tuple[dict[str, Any], torch.Tensor | None]]]:
    """Batches of prepared samples; the next batch is already decoding in `pool` while the caller uses one."""
    pending = None
    for chunk in _batches(samples, batch_size):
        submitted = pool.map(prepare, chunk)  # submits the whole batch now, results in order
        if pending is not None:
            yield list(pending)
        pending = submitted
    if pending is not None:
        yield list(pending)


def embed_samples(
    samples: Iterable[dict[str, Any]],
    lm: LoadedModel,
    batch_size: int,
    meta: dict[str, str],
    decode_threads: int = 2,
    n_classes: int | None = None,
) -> pa.Table:
    """Embed raw WebDataset samples; rows keep input order and carry status/error for undecodable images.

    `meta` fills the constant columns (dataset, split, shard, shard_hash). A thread pool decodes the next batch while the model
    runs on the current one. With `n_classes`, a label outside [0, n_classes) (or one that is not an
    integer) makes the row status 'error' ("label 12 out of range for 10 classes"), so classification and metrics
    never see it; a sample without a label stays 'ok' (predicted, left out of the metrics). A shard-error sample
    (see storage.shards.SHARD_ERROR) becomes an error row keyed `<shard>#shard`.
    """
    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, decode_threads)) as pool:
        prepare = partial(_prepare, preprocess=lm.preprocess, n_classes=n_classes)
        for prepared in _decoded_batches(samples, prepare, batch_size, pool):
            ok = [tensor for _, tensor in prepared if tensor is not None]
            if ok:
                vectors.append(encode_images(torch.stack(ok), lm))
            rows.extend(row for row, _ in prepared)
    valid = np.array([row["status"] == "ok" for row in rows], dtype=bool)
    dim = int(getattr(lm.model, "embed_dim", 0) or 0)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    columns = {name: [row[name] for row in rows] for name in ("sample_key", "label", "status", "error")}
    n = len(rows)
    columns |= {name: repeated(value, n) for name, value in meta.items()}
    columns |= {
        "model_id": repeated(lm.model_id, n),
        "embedding": list_array(matrix, pa.float32(), valid),
    }
    columns = {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in IMAGE_EMBEDDINGS}  # meta not given: null
    return pa.Table.from_pydict(columns, schema=IMAGE_EMBEDDINGS)


def token_counts(texts: Sequence[str], lm: LoadedModel) -> list[int]:
    """Token count of each text with start/end tokens (compare with lm.context_length to find truncation)."""
    encode = getattr(lm.tokenizer, "encode", None)
    if encode is None:  # HF tokenizers: count non-padding ids of an untruncated encoding
        inner = lm.tokenizer.tokenizer
        return [len(inner(t)["input_ids"]) for t in texts]
    return [len(encode(t)) + 2 for t in texts]


@torch.inference_mode()
def encode_texts(texts: Sequence[str], lm: LoadedModel, batch_size: int = 256) -> np.ndarray:
    """L2-normalised text embeddings (len(texts) x D), truncated at the model's context length."""
    out = []
    for chunk in _batches(texts, batch_size):
        tokens = lm.tokenizer(list(chunk)).to(lm.device)
        out.append(torch.nn.functional.normalize(lm.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
    dim = int(getattr(lm.model, "embed_dim", 0) or 0)
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)
