"""Classification metrics over label/prediction arrays: top-1, top-5, mean and per-class recall, calibration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# the spread over seeds everywhere (CLI, the fewshot_summary query's stddev_samp, the report, the plots): the sample
# standard deviation, what papers report as mean +- std over seeds
SEED_STD_DDOF = 1


def seed_std(values: Sequence[float]) -> float | None:
    """The sample standard deviation (ddof = SEED_STD_DDOF) of one result over seeds; None for a single seed, as SQL's
    stddev_samp gives NULL."""
    if len(values) <= SEED_STD_DDOF:
        return None
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=SEED_STD_DDOF))


def classification_metrics(labels: np.ndarray, topk: np.ndarray, n_classes: int) -> list[tuple[str, int | None, float]]:
    """Metrics as (metric, class_index, value) rows; `topk` is (N, k) class indices, best first.

    top1/top5 are accuracies over all samples; mean_per_class_recall averages the recall of classes that occur
    in `labels` (as CLIP_benchmark does); per-class rows use metric 'recall' with class_index set.
    """
    labels = np.asarray(labels)
    topk = np.asarray(topk)
    if labels.ndim != 1 or topk.ndim != 2 or len(labels) != len(topk):
        raise ValueError(f"labels {labels.shape} and topk {topk.shape} must be (N,) and (N, k)")
    if len(labels) == 0:
        return []
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}); got min {labels.min()} max {labels.max()}")
    hit1 = topk[:, 0] == labels
    hit5 = (topk[:, :5] == labels[:, None]).any(axis=1)
    counts = np.bincount(labels, minlength=n_classes)
    correct = np.bincount(labels, weights=hit1.astype(np.float64), minlength=n_classes)
    present = counts > 0
    recall = np.divide(correct, counts, out=np.zeros(n_classes), where=present)
    rows: list[tuple[str, int | None, float]] = [
        ("top1", None, float(hit1.mean())),
        ("top5", None, float(hit5.mean())),
        ("mean_per_class_recall", None, float(recall[present].mean())),
        ("n_samples", None, float(len(labels))),
    ]
    rows += [("recall", int(c), float(recall[c])) for c in np.flatnonzero(present)]
    return rows


ECE_BINS = 15  # equal-width confidence bins, as Guo et al. (2017) "On Calibration of Modern Neural Networks"


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Reliability-diagram bins: equal-width confidence intervals (lo, hi] (the first also holds 0) with the number
    of samples, their accuracy and mean confidence; empty bins are left out."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"confidence {conf.shape} and correct {hit.shape} must be two (N,) arrays")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=hit, minlength=bins)
    mean_conf = np.bincount(which, weights=conf, minlength=bins)
    return [
        {"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(n[b]), "accuracy": acc[b] / n[b],
         "confidence": mean_conf[b] / n[b]}
        for b in np.flatnonzero(n)
    ]  # fmt: skip


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted mean over confidence bins of |accuracy - mean confidence| (0 for no samples)."""
    rows = reliability(confidence, correct, bins)
    total = sum(r["n"] for r in rows)
    return float(sum(r["n"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / total) if total else 0.0
