"""Turning class scores into prediction rows: top-5, predicted class, softmax margin and confidence per sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from coderflow.storage.schemas import PREDICTIONS
from coderflow.tasks.classify.methods import LOGIT_SCALE, margin_confidence, top_k


def prediction_table(
    scores: np.ndarray,
    keys: Sequence[str],
    labels: np.ndarray,
    *,
    run_id: str,
    method: str,
    dataset: str,
    split: str,
    logits: bool = True,
    shots: int | None = None,
    seed: int | None = None,
    pred: np.ndarray | None = None,
    top5: np.ndarray | None = None,
    image_hash: Sequence[str] | None = None,
) -> pa.Table:
    """Predictions of one method; `logits=False` means cosine-valued scores (scaled by 100 for the softmax of the
    margin and the confidence, as CLIP scales its cosines).

    `pred` and `top5` override the score order (used by re-ranking methods). `image_hash`: each sample's image
    content hash (None: unknown, stored as null), what `coderflow compare` pairs samples of two runs by.
    """
    top5 = top_k(scores, 5) if top5 is None else np.asarray(top5, dtype=np.int32)
    best = top5[:, 0] if pred is None else np.asarray(pred, dtype=np.int32)
    n = len(keys)
    gap, confidence = margin_confidence(scores if logits else LOGIT_SCALE * scores, best)
    columns = {
        "run_id": [run_id] * n,
        "method": [method] * n,
        "dataset": [dataset] * n,
        "split": [split] * n,
        "shots": pa.nulls(n, pa.int32()) if shots is None else [shots] * n,
        "seed": pa.nulls(n, pa.int32()) if seed is None else [seed] * n,
        "sample_key": list(keys),
        "label": pa.array(np.asarray(labels), mask=np.asarray(labels) < 0, type=pa.int32()),
        "pred": best.astype(np.int32),
        "top5": pa.FixedSizeListArray.from_arrays(top5.reshape(-1), top5.shape[1]).cast(pa.list_(pa.int32())),
        "margin": gap,
        "confidence": confidence,
        "image_hash": pa.nulls(n, pa.string()) if image_hash is None else list(image_hash),
    }
    return pa.table(columns).cast(PREDICTIONS)
