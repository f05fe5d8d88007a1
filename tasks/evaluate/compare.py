"""Paired comparison of two classifiers on the same samples: accuracy difference, exact McNemar test, bootstrap CI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


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
    correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
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
    resamples: int = 2000,
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


def compare_runs(
    layout: Any,
    run_a: str,
    methods_a: list[str],
    run_b: str,
    methods_b: list[str],
    resamples: int = 2000,
    seed: int = 0,
    per_class: bool = False,
) -> list[dict[str, Any]]:
    """Each (method A of run A, method B of run B) pair on the labelled samples both classified (paired by sample
    key and shots; several seeds: the first). Rows: Comparison fields plus `shots` (None for zero-shot)."""
    from coderflow.storage.db import query

    rows = []
    for ma, mb in zip(methods_a, methods_b, strict=True):
        t = query(layout, PAIRED_SQL, params=[run_a, ma, run_b, mb])
        if t.num_rows == 0:
            raise ValueError(
                f"no labelled samples that both {run_a}:{ma} and {run_b}:{mb} classified: check the run ids and "
                "methods (`coderflow runs`)"
            )
        shots, label = t["shots"].to_numpy(), t["label"].to_numpy()
        pa_, pb_ = t["pred_a"].to_numpy(), t["pred_b"].to_numpy()
        for s in np.unique(shots):
            m = shots == s
            groups = [(None, m)] + ([(int(c), m & (label == c)) for c in np.unique(label[m])] if per_class else [])
            for ci, mask in groups:
                c = compare(ma, mb, pa_[mask] == label[mask], pb_[mask] == label[mask], resamples, seed, ci)
                rows.append({**c.row(), "shots": None if s < 0 else int(s)})
    return rows
