"""Intra-modal overlap: how much the cosine distributions of same-class and different-class image pairs overlap.

overlap = sum over bins of min(p_same[b], p_diff[b]), where p_* are the normalised histograms (each sums to 1) of
pair cosines over `bins` equal bins on [-1, 1]. 0: the two distributions are disjoint (bin-wise); 1: identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_PAIRS = 2_000_000  # above this many pairs (i < j), a seeded random subsample of pairs is used
_BLOCK = 65_536  # pairs per block when computing sampled cosines


@dataclass(frozen=True)
class OverlapStats:
    """Overlap of same/different-class cosine histograms, their means, and the mean per-dimension variance."""

    overlap: float
    mean_same: float
    mean_diff: float
    variance: float
    n_same: int
    n_diff: int
    bins: int
    sampled: bool


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pair_cosines(
    features: np.ndarray, labels: np.ndarray, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cosines of same-class and of different-class pairs: all pairs i < j, or `max_pairs` seeded random pairs
    (i != j, drawn with replacement) when there are more. Returns (same, diff, sampled)."""
    x = _normalize(features)
    labels = np.asarray(labels)
    n = len(x)
    if x.ndim != 2 or labels.shape != (n,):
        raise ValueError(f"features must be [N, D] with one label each; got {x.shape} and labels {labels.shape}")
    if n < 2:
        raise ValueError(f"need at least 2 samples to form pairs, got {n}")
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        cos = (x @ x.T)[i, j]
        sampled = False
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs)
        j = (i + rng.integers(1, n, size=max_pairs)) % n  # uniform over j != i
        cos = np.concatenate(
            [np.einsum("pd,pd->p", x[i[s : s + _BLOCK]], x[j[s : s + _BLOCK]]) for s in range(0, max_pairs, _BLOCK)]
        )
        sampled = True
    same = labels[i] == labels[j]
    return cos[same], cos[~same], sampled


def histogram_overlap(a: np.ndarray, b: np.ndarray, bins: int = 100) -> float:
    """Intersection of the normalised histograms of a and b over `bins` equal bins on [-1, 1] (values clipped)."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"both samples need values, got {len(a)} and {len(b)}; check there are >= 2 classes")
    edges = np.linspace(-1.0, 1.0, bins + 1)
    pa = np.histogram(np.clip(a, -1, 1), bins=edges)[0] / len(a)
    pb = np.histogram(np.clip(b, -1, 1), bins=edges)[0] / len(b)
    return float(np.minimum(pa, pb).sum())


def overlap_stats(
    features: np.ndarray, labels: np.ndarray, bins: int = 100, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> OverlapStats:
    """Overlap, mean same/different-class cosine and feature variance of L2-normalised features (normalised here).

    variance = mean over dimensions of the per-dimension variance of the normalised features.
    """
    same, diff, sampled = pair_cosines(features, labels, max_pairs, seed)
    if len(same) == 0 or len(diff) == 0:
        raise ValueError(
            f"got {len(same)} same-class and {len(diff)} different-class pairs; need >= 2 classes and a class "
            "with >= 2 samples (raise max_pairs if sampling missed them)"
        )
    return OverlapStats(
        overlap=histogram_overlap(same, diff, bins),
        mean_same=float(same.mean()),
        mean_diff=float(diff.mean()),
        variance=float(_normalize(features).var(axis=0).mean()),
        n_same=len(same),
        n_diff=len(diff),
        bins=bins,
        sampled=sampled,
    )
