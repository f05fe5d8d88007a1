"""Image and text encoding: decoding samples to tensors, batched inference, per-row status for bad images."""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from coderflow.config import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from coderflow.storage.schemas import IMAGE_EMBEDDINGS, list_array, repeated
from coderflow.storage.shards import image_entry, label_problem, sample_error, sample_label
from coderflow.tasks.embed.model import LoadedModel


@dataclass(frozen=True)
class DecodeLimits:
    """The largest image decoded (model.max_image_bytes, model.max_image_pixels): a larger one is an error row."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


def too_large(size: int, limits: DecodeLimits) -> str | None:
    """Why an image file of `size` bytes is not decoded, else None."""
    if size <= limits.max_bytes:
        return None
    return (
        f"image file is {size / 2**20:.1f} MiB, over model.max_image_bytes ({limits.max_bytes / 2**20:.1f} MiB): "
        "not decoded; shrink it or raise the limit"
    )


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Decode image bytes to RGB (palette/alpha, CMYK and 16-bit images included). A file or an image (width x
    height, read from its header) over `limits` raises ValueError before any pixel is decoded."""
    if (reason := too_large(len(data), limits)) is not None:
        raise ValueError(reason)
    img = Image.open(io.BytesIO(data))  # reads the header only
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ValueError(
            f"image is {width}x{height} pixels ({width * height / 1e6:.1f} MP), over model.max_image_pixels "
            f"({limits.max_pixels / 1e6:.1f} MP): not decoded; shrink it or raise the limit"
        )
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


NOT_DECODED = "__not_decoded__"  # why a sample's image was left out before decoding (it is then an error row)


def _prepare(
    sample: dict[str, Any], preprocess: Any, n_classes: int | None = None, limits: DecodeLimits = DecodeLimits()
) -> tuple[dict[str, Any], torch.Tensor | None]:
    row = {"sample_key": sample.get("__key__"), "label": sample_label(sample), "status": "ok", "error": None}
    problem = sample_error(sample) or label_problem(sample, n_classes) or sample.get(NOT_DECODED)
    if problem is not None:  # a damaged shard, a label no class matches, an over-size file: recorded, not embedded
        row.update(status="error", error=problem[:500])
        return row, None
    entry = image_entry(sample)
    if entry is None:
        row.update(status="error", error="sample has no image entry")
        return row, None
    try:
        return row, preprocess(decode_image(entry[1], limits))
    except Exception as exc:  # any decoder failure is a per-row error, the shard goes on
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
        return row, None


def _screened(samples: Iterable[dict[str, Any]], limits: DecodeLimits) -> Iterator[dict[str, Any]]:
    """Samples whose image file is over the byte limit lose their bytes for the reason, so that the bytes never
    travel to a decode worker."""
    for sample in samples:
        entry = image_entry(sample)
        if entry is not None and (reason := too_large(len(entry[1]), limits)) is not None:
            sample = {k: v for k, v in sample.items() if k != entry[0]} | {NOT_DECODED: reason}
        yield sample


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@torch.inference_mode()
def encode_images(batch: torch.Tensor, lm: LoadedModel) -> np.ndarray:
    """L2-normalised image embeddings; on CUDA the batch goes through pinned memory with a non-blocking copy, and
    `precision` bf16/fp16 runs the fp32 model under autocast."""
    cuda = lm.device.type == "cuda"
    x = batch.pin_memory().to(lm.device, non_blocking=True) if cuda else batch.to(lm.device)
    dtype = AUTOCAST.get(getattr(lm, "precision", "fp32"))
    with torch.autocast(lm.device.type, dtype=dtype, enabled=dtype is not None):
        feats = lm.model.encode_image(x)
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


# decode worker processes: one pool per process, for the preprocess of the model in use (a new model's preprocess
# replaces it), started once by a forkserver that has imported this module only (the workers share its torch and
# PIL pages, and never copy the parent's threads or model)
_POOL: tuple[tuple[int, int], ProcessPoolExecutor] | None = None
_POOLS_LOCK = threading.Lock()
_WORKER_PREPROCESS: Any = None


def _init_worker(preprocess: Any) -> None:
    global _WORKER_PREPROCESS
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism
    _WORKER_PREPROCESS = preprocess


def _prepare_in_worker(
    sample: dict[str, Any], n_classes: int | None, limits: DecodeLimits
) -> tuple[dict[str, Any], np.ndarray | None]:
    row, tensor = _prepare(sample, _WORKER_PREPROCESS, n_classes, limits)
    return row, None if tensor is None else tensor.numpy()  # by value: no shared-memory handles to run out of


def decode_pool(preprocess: Any, workers: int) -> ProcessPoolExecutor:
    """The process pool that decodes and preprocesses images with `preprocess` (started on first use)."""
    global _POOL
    key = (id(preprocess), workers)
    with _POOLS_LOCK:
        if _POOL is not None and _POOL[0] != key:
            _POOL[1].shutdown(wait=True)  # another model's pool: its running maps finish first
            _POOL = None
        if _POOL is None:
            if sys.platform == "win32":
                ctx = multiprocessing.get_context("spawn")
            else:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload([__name__])
            _POOL = (key, ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=(preprocess,)))
        return _POOL[1]


def close_decode_pool() -> None:
    """Stop this process's decode workers, if any (a later large split starts them again)."""
    global _POOL
    with _POOLS_LOCK:
        if _POOL is not None:
            _POOL[1].shutdown(wait=True)
            _POOL = None


def decode_pool_running() -> bool:
    """Whether this process's decode workers are started (then they cost nothing more to use)."""
    return _POOL is not None


# When `model.decode_workers` is not set, a split's images are decoded by worker processes only if it has at least
# MIN_IMAGES_FOR_WORKERS images and this process may use more than MIN_CORES_FOR_WORKERS cores; else two threads next
# to the model decode them. Starting the workers costs a fixed 8 s or so on 2 cores (a forkserver that imports torch
# and open_clip, then one worker per core), and on 2 cores they also lose per image: the workers and the model's two
# torch threads oversubscribe the cores. Measured with benchmarks/end_to_end.py --small-split (ViT-S-32-alt, batch 64,
# 500x375 JPEGs, fresh process each, 2 vCPUs): 40 images 2.2 s in threads / 10.1 s with 2 workers (model alone
# 0.5 s); 160 images 4.5 s / 23.0 s (model 2.3 s); 480 images 43-51 s with 2 workers (model 5.3 s). Details and the
# threads figure in benchmarks/README.md, "Small splits". No machine of more cores was at hand: there the 1000 is an
# estimate (a start of a few seconds against a few ms saved per image), not a measurement.
MIN_IMAGES_FOR_WORKERS = 1000
MIN_CORES_FOR_WORKERS = 2


def decode_workers(configured: int | None = None, images: int | None = None) -> int:
    """Decode processes: the configured number; else one per core this process may use, or 0 (two threads in this
    process) for a split of `images` that is too small to repay starting them, or on a machine of too few cores (see
    MIN_IMAGES_FOR_WORKERS), unless they are started already. Always 0 inside a daemonic process (a Dask worker),
    which may not start processes of its own."""
    if multiprocessing.current_process().daemon:
        return 0
    if configured is not None:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    small = images is not None and (images < MIN_IMAGES_FOR_WORKERS or cores <= MIN_CORES_FOR_WORKERS)
    return 0 if small and not decode_pool_running() else cores


def _decoded_batches(
    samples: Iterable[dict[str, Any]], prepare: Any, batch_size: int, pool: Executor, chunksize: int = 1
) -> Iterator[list[tuple[dict[str, Any], torch.Tensor | None]]]:
    """Batches of prepared samples; the next batch is already decoding in `pool` while the caller uses one."""
    pending = None
    for chunk in _batches(samples, batch_size):
        submitted = pool.map(prepare, chunk, chunksize=chunksize)  # submits the whole batch now, results in order
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
    workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
    limits: DecodeLimits = DecodeLimits(),
) -> pa.Table:
    """Embed raw WebDataset samples; rows keep input order and carry status/error for undecodable images.

    `meta` fills the constant columns (dataset, split, shard, shard_hash). While the model runs on one batch the next
    is decoded and preprocessed: by `workers` processes (a pool shared by every shard of this process), or with
    `workers=0` by `decode_threads` threads. With `n_classes`, a label outside [0, n_classes) (or one that is not an
    integer) makes the row status 'error' ("label 12 out of range for 10 classes"), so classification and metrics
    never see it; a sample without a label stays 'ok' (predicted, left out of the metrics). A shard-error sample
    (see storage.shards.SHARD_ERROR) becomes an error row keyed `<shard>#shard`. `on_batch` is called with the
    number of samples of each finished batch (progress reports). An image over `limits` (file bytes, or pixels in
    its header) becomes an error row without being decoded.
    """
    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    if workers > 0:  # worker processes (shared by the shards of this process), batches split among them
        pool: Executor = decode_pool(lm.preprocess, workers)
        prepare: Any = partial(_prepare_in_worker, n_classes=n_classes, limits=limits)
        chunksize = max(1, batch_size // (2 * workers))
    else:
        pool = ThreadPoolExecutor(max_workers=max(1, decode_threads))
        prepare, chunksize = partial(_prepare, preprocess=lm.preprocess, n_classes=n_classes, limits=limits), 1
    try:
        for prepared in _decoded_batches(_screened(samples, limits), prepare, batch_size, pool, chunksize):
            ok = [torch.as_tensor(tensor) for _, tensor in prepared if tensor is not None]
            if ok:
                vectors.append(encode_images(torch.stack(ok), lm))
            rows.extend(row for row, _ in prepared)
            if on_batch is not None:
                on_batch(len(prepared))
    finally:
        if workers <= 0:
            pool.shutdown()
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


@dataclass(frozen=True)
class _CausalTextTower:
    """The parts of an open_clip text tower whose output at the pooled token does not depend on later positions."""

    token_embedding: Any
    positional_embedding: torch.Tensor
    transformer: Any
    attn_mask: torch.Tensor
    ln_final: Any
    text_projection: Any
    pool_type: str
    eos_id: int | None


def causal_text_tower(model: Any) -> _CausalTextTower | None:
    """The model's text tower when trimming padding gives identical outputs: a causal attention mask and pooling at
    the end-of-text token ('argmax' or 'eos'), no appended class token, no padding mask. None otherwise (SigLIP's
    'last' pooling, bidirectional towers, Hugging Face towers): those use the plain `encode_text`."""
    text = getattr(model, "text", None)
    if type(text).__name__ == "TextTransformer":  # CustomTextCLIP
        if text.cls_emb is not None or getattr(text, "use_pad_mask", False):
            return None
        parts, pool, eos = text, text.pool_type, getattr(text, "eos_id", None)
    elif hasattr(model, "transformer") and hasattr(model, "token_embedding"):  # CLIP: the tower's parts on the model
        parts, pool, eos = model, getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)
    else:
        return None
    mask = getattr(parts, "attn_mask", None)
    if mask is None or pool not in ("argmax", "eos") or (pool == "eos" and eos is None):
        return None
    return _CausalTextTower(
        parts.token_embedding, parts.positional_embedding, parts.transformer, mask, parts.ln_final,
        parts.text_projection, pool, eos,
    )  # fmt: skip


def _pooled_positions(tokens: torch.Tensor, tower: _CausalTextTower) -> torch.Tensor:
    """Index of the end-of-text token of each row (open_clip's text_global_pool rule)."""
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == tower.eos_id).int().argmax(dim=-1)


def _encode_trimmed(tokens: torch.Tensor, tower: _CausalTextTower) -> torch.Tensor:
    """open_clip's encode_text on the first L positions only (L: the batch's last end-of-text token + 1), with the
    causal mask and positional embedding cut to L: the pooled token never attends to later positions, so the output
    is the same as over the padded context (open_clip/model.py CLIP.encode_text, transformer.py TextTransformer)."""
    length = int(_pooled_positions(tokens, tower).max()) + 1
    tokens = tokens[:, :length]
    cast = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast) + tower.positional_embedding[:length].to(cast)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), _pooled_positions(tokens, tower)]
    if tower.text_projection is None:
        return x
    return tower.text_projection(x) if isinstance(tower.text_projection, torch.nn.Linear) else x @ tower.text_projection


@torch.inference_mode()
def encode_texts(texts: Sequence[str], lm: LoadedModel, batch_size: int = 256, trim: bool = True) -> np.ndarray:
    """L2-normalised text embeddings (len(texts) x D), truncated at the model's context length.

    With `trim` (and a causal text tower, see `causal_text_tower`) texts are encoded in order of token length, each
    batch cut to its longest text: 3-5x less work for short prompts, the same embeddings as `encode_text` (within
    float rounding, tests/test_embed.py). Rows come back in the input order.
    """
    dim = int(getattr(lm.model, "embed_dim", 0) or 0)
    if not texts:
        return np.zeros((0, dim), np.float32)
    tower = causal_text_tower(lm.model) if trim else None
    tokens = lm.tokenizer(list(texts))  # all at once: tokenizing is CPU work a GPU would otherwise wait on twice
    order = (
        np.argsort(_pooled_positions(tokens, tower).numpy(), kind="stable")
        if tower is not None
        else np.arange(len(texts))
    )
    out = np.zeros((len(texts), dim), np.float32) if dim else None
    chunks = []
    dtype = AUTOCAST.get(getattr(lm, "precision", "fp32"))
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokens[torch.from_numpy(idx)].to(lm.device)
        with torch.autocast(lm.device.type, dtype=dtype, enabled=dtype is not None):
            feats = _encode_trimmed(batch, tower) if tower is not None else lm.model.encode_text(batch)
        vecs = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), vecs.shape[1]), np.float32)
        chunks.append((idx, vecs))
    for idx, vecs in chunks:
        out[idx] = vecs
    return out
