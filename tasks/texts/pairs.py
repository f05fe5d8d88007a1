"""Class pairs worth one-vs-other texts: the pairs zero-shot confuses most, or the nearest class prompts."""

from __future__ import annotations

import numpy as np


def _check_budget(budget: int) -> None:
    if budget < 0:
        raise ValueError(f"pair budget {budget} is negative: pass 0 or more pairs")


def confused_pairs(logits: np.ndarray, budget: int, top_k: int = 5, max_gap: float = 0.1) -> list[tuple[int, int]]:
    """Pairs (i < j) that co-occur most often among the top-K classes of uncertain samples.

    A sample is uncertain when its softmax top-1 minus top-2 probability is below `max_gap`. Pairs are ranked by how
    many uncertain samples have both classes in their top-K (ties: smaller indices first); at most `budget` pairs.
    """
    _check_budget(budget)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (samples, classes>=2), got shape {logits.shape}")
    k = min(top_k, logits.shape[1])
    if k < 2:
        raise ValueError(f"top_k={top_k} must be at least 2 to form pairs")
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    ranked = np.argsort(-probs, axis=1, kind="stable")
    gap = np.take_along_axis(probs, ranked[:, :1], 1)[:, 0] - np.take_along_axis(probs, ranked[:, 1:2], 1)[:, 0]
    top = np.sort(ranked[gap < max_gap, :k], axis=1)
    n = logits.shape[1]
    counts = np.zeros((n, n), dtype=np.int64)
    a, b = np.triu_indices(k, 1)
    np.add.at(counts, (top[:, a].ravel(), top[:, b].ravel()), 1)
    i, j = np.nonzero(counts)
    order = np.lexsort((j, i, -counts[i, j]))[:budget]
    return [(int(i[o]), int(j[o])) for o in order]


def nearest_pairs(class_embeddings: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """The `budget` class pairs (i < j) with the highest cosine between their class embeddings (ties: smaller first).

    class_embeddings has one row per class, e.g. the mean of the class's name-prompt text embeddings.
    """
    _check_budget(budget)
    x = np.asarray(class_embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"class_embeddings must be (classes>=2, dim), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"class embedding rows {np.nonzero(norms[:, 0] == 0)[0].tolist()} are all zeros")
    x = x / norms
    i, j = np.triu_indices(x.shape[0], 1)
    cos = np.einsum("pd,pd->p", x[i], x[j])
    order = np.lexsort((j, i, -cos))[:budget]
    return [(int(i[o]), int(j[o])) for o in order]
