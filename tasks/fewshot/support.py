"""Support sets of a few-shot grid: the union pool to augment, augmented view samples, and view averaging."""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from coderflow.storage.shards import image_entry
from coderflow.tasks.embed.encode import decode_image
from coderflow.tasks.fewshot.methods import l2_normalize
from coderflow.tasks.fewshot.sampling import Sampling, augment_image, draw_support

_VIEW = re.compile(r"^(?P<key>.+)_v(?P<view>\d{3})$")


def plan_supports(
    keys: Sequence[str],
    labels: np.ndarray,
    shots: Sequence[int],
    seeds: Sequence[int],
    n_classes: int,
    sampling: Sampling = "reference",
) -> tuple[dict[str, list[str]], dict[str, dict[int, int]]]:
    """Support keys per '<shots>-<seed>' grid cell (drawn by `sampling` from the keys in their train order; a key
    repeats where `reference` draws with repetition), and the classes short of samples in each cell."""
    sets, short = {}, {}
    for k in shots:
        for seed in seeds:
            s = draw_support(np.asarray(labels), k, seed, n_classes, sampling)
            sets[f"{k}-{seed}"] = [keys[i] for i in s.indices]
            if s.short_classes:
                short[f"{k}-{seed}"] = s.short_classes
    return sets, short


def sample_source_path(sample: dict[str, Any]) -> str:
    """The image's path as its source names it: `json.path` as ingest stored it (an image folder's path under the
    folder, a CoOp split file's path), else the sample key (WebDataset sources, the demo)."""
    raw = sample.get("json")
    try:
        meta = json.loads(raw) if isinstance(raw, bytes | str) else raw
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    path = meta.get("path") if isinstance(meta, dict) else None
    return str(path) if isinstance(path, str) and path else str(sample["__key__"])


def view_key(key: str, view: int) -> str:
    return f"{key}_v{view:03d}"


def source_key(key: str) -> str:
    """The original sample key of an augmented view's key."""
    m = _VIEW.match(key)
    if m is None:
        raise ValueError(f"{key!r} is not an augmented view key (<key>_vNNN)")
    return m["key"]


def augmented_samples(samples: Iterable[dict[str, Any]], views: int, seed: int) -> Iterator[dict[str, Any]]:
    """`views` random-resized-crop + flip views of each sample's image, as PNG samples keyed <key>_vNNN.

    The augmentation of a view depends only on (seed, sample key, view), so a sample gets the same views whatever
    pool it is in. Undecodable images are skipped (they already carry an error row in the plain split).
    """
    for sample in samples:
        entry = image_entry(sample)
        if entry is None:
            continue
        try:
            img = decode_image(entry[1])
        except Exception:  # recorded for the plain split; nothing to augment
            continue
        key = sample["__key__"]
        ident = zlib.crc32(key.encode())
        for v in range(views):
            buf = io.BytesIO()
            augment_image(img, seed, ident, v, size=min(img.size)).save(buf, format="PNG")
            yield {
                "__key__": view_key(key, v),
                "png": buf.getvalue(),
                "cls": sample.get("cls", b""),
                "json": {"view": v},
            }


def average_views(keys: Sequence[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """L2-normalised mean embedding of each source sample's views (Tip-Adapter's augmentation averaging)."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(source_key(k), []).append(i)
    return {k: l2_normalize(x[idx].mean(axis=0, keepdims=True))[0] for k, idx in groups.items()}
