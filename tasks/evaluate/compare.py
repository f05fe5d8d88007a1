"""Paired comparison of two classifiers on the same samples: accuracy difference, exact McNemar test, bootstrap CI."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# bootstrap resamples of a paired 95% interval, the default of `coderflow compare` and `coderflow report` alike
BOOTSTRAP_RESAMPLES = 2000


def against_clip(methods: Collection[str]) -> tuple[list[str], list[str]]:
    """The default pairs within one run: each other method (A, sorted) against clip (B); no pairs when the run has
    no clip or no other method."""
    others = sorted(set(methods) - {"clip"})
    if "clip" not in methods or not others:
        return [], []
    return others, ["clip"] * len(others)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b = samples only A gets right, c = only B gets right; under H0 the b + c
    discordant samples split Binomial(b + c, 1/2). p = min(1, 2 P(X <= min(b, c))), summed in log space."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(x - top) for x in logs)
    return min(1.0, 2.0 * tail)


def bootstrap_ci(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(A) - accuracy(B), resampling samples (pairs kept together)."""
    d = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)
    n = len(d)
    if n == 0 or resamples < 1:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // n)  # bounded memory: about 2M draws at a time
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """A against B on the n samples both classified (difference = accuracy_a - accuracy_b)."""

    method_a: str
    method_b: str
    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    only_a: int  # samples only A classified correctly
    only_b: int
    class_index: int | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    method_a: str,
    method_b: str,
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    class_index: int | None = None,
) -> Comparison:
    """Paired statistics of two 0/1 correctness vectors over the same samples (in the same order)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"{a.shape} and {b.shape} correctness vectors: pass the same samples for both methods")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    acc_a = float(a.mean()) if n else math.nan
    acc_b = float(b.mean()) if n else math.nan
    low, high = bootstrap_ci(a, b, resamples, seed)
    return Comparison(
        method_a, method_b, n, acc_a, acc_b, acc_a - acc_b, low, high, mcnemar_exact(only_a, only_b), only_a, only_b,
        class_index,
    )  # fmt: skip


# the macro of storage/macros.sql, so `coderflow compare` and SQL pair samples the same way
PAIRED_SQL = "SELECT shots, label, pred_a, pred_b FROM paired_predictions(?, ?, ?, ?)"
# what one (run, method) classified, per shots (-1: zero-shot): its data and its labelled samples
SAMPLES_SQL = (
    "SELECT coalesce(shots, -1) AS shots, string_agg(DISTINCT dataset || '/' || split, ', ') AS data, "
    "count(DISTINCT sample_key) AS n FROM predictions WHERE run_id = ? AND method = ? AND label IS NOT NULL "
    "GROUP BY ALL"
)


def _no_common_images(run_a: str, ma: str, held_a: dict[int, Any], run_b: str, mb: str, held_b: dict[int, Any]) -> str:
    """Why two (run, method) pairs have no sample to pair, in one line."""
    if not held_a or not held_b:
        return (
            f"no labelled samples that both {run_a}:{ma} and {run_b}:{mb} classified: check the run ids and methods "
            "(`coderflow runs`)"
        )
    data_a = ", ".join(sorted({r["data"] for r in held_a.values()}))
    data_b = ", ".join(sorted({r["data"] for r in held_b.values()}))
    if data_a != data_b:
        return (
            f"runs {run_a} ({data_a}) and {run_b} ({data_b}) share no image: only the same images (same dataset, "
            "split and image content) can be paired; compare runs of one dataset and split"
        )
    return (
        f"runs {run_a} and {run_b} share no image of {data_a}: the split was re-ingested or re-split between them, so "
        "its sample keys name other images now; compare runs computed on the same images"
    )


def _overlap_note(run_a: str, run_b: str, shots: int, n: int, held_a: dict[int, Any], held_b: dict[int, Any]) -> str:
    """'paired 120 of 200 samples ...' when some samples of either run have no counterpart, else ''."""
    n_a, n_b = held_a[shots]["n"], held_b[shots]["n"]
    if n >= max(n_a, n_b):
        return ""
    at = f" at {shots} shots" if shots >= 0 else ""
    return (
        f"paired {n} of {max(n_a, n_b)} samples{at} ({run_a}: {n_a}, {run_b}: {n_b}); the others are not the same "
        "image in both runs and are left out"
    )


def compare_runs(
    layout: Any,
    run_a: str,
    methods_a: list[str],
    run_b: str,
    methods_b: list[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    per_class: bool = False,
    notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Each (method A of run A, method B of run B) pair on the labelled samples both classified, paired by image
    (dataset, split, sample key and image content hash) and shots; several seeds: the first. Rows: Comparison
    fields plus `shots` (None for zero-shot). Two runs without a common image are refused (ValueError); a partial
    overlap ('paired 120 of 200 samples ...') is appended to `notes`."""
    from coderflow.storage.db import query

    rows = []
    for ma, mb in zip(methods_a, methods_b, strict=True):
        t = query(layout, PAIRED_SQL, params=[run_a, ma, run_b, mb])
        held_a = {r["shots"]: r for r in query(layout, SAMPLES_SQL, params=[run_a, ma]).to_pylist()}
        held_b = {r["shots"]: r for r in query(layout, SAMPLES_SQL, params=[run_b, mb]).to_pylist()}
        if t.num_rows == 0:
            raise ValueError(_no_common_images(run_a, ma, held_a, run_b, mb, held_b))
        shots, label = t["shots"].to_numpy(), t["label"].to_numpy()
        pa_, pb_ = t["pred_a"].to_numpy(), t["pred_b"].to_numpy()
        for s in np.unique(shots):
            m = shots == s
            note = _overlap_note(run_a, run_b, int(s), int(m.sum()), held_a, held_b)
            if note and notes is not None and note not in notes:
                notes.append(note)
            groups = [(None, m)] + ([(int(c), m & (label == c)) for c in np.unique(label[m])] if per_class else [])
            for ci, mask in groups:
                c = compare(ma, mb, pa_[mask] == label[mask], pb_[mask] == label[mask], resamples, seed, ci)
                rows.append({**c.row(), "shots": None if s < 0 else int(s)})
    return rows
