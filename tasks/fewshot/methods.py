"""Training-free few-shot logits (prototype, Tip-Adapter, CODER-Adapter) and the alpha/beta search on validation data.

All functions take and return numpy arrays (float32); rows are samples. Cache methods share one form:
    logits = zero_shot + alpha * exp(-beta * (1 - A)) @ onehot(support_labels)
with A the query-to-support affinity: plain cosine for Tip-Adapter (Zhang et al. 2022), per-row min-max normalised
cosine of CODER vectors for the CODER-Adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from coderflow.tasks.classify.methods import l2_normalize

# Tip-Adapter's search ranges (alpha in [0.1, 3), beta in [0.1, 7)), with a coarser beta step.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(0.1 + i * 2.9 / 20, 6) for i in range(20))
DEFAULT_BETAS: tuple[float, ...] = tuple(round(0.1 + i * 6.9 / 50, 6) for i in range(50))
CHUNK_ROWS = 4096  # query rows per block, bounds the affinity matrix held in memory


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[S, C] float32 one-hot matrix of integer labels in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(
            f"labels must be 1-D integers in [0, {num_classes}), got shape {labels.shape} "
            f"with range [{labels.min() if labels.size else None}, {labels.max() if labels.size else None}]; "
            "check num_classes matches the class list"
        )
    out = np.zeros((labels.size, num_classes), dtype=np.float32)
    out[np.arange(labels.size), labels] = 1.0
    return out


def zero_shot_logits(queries: np.ndarray, text_classifier: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """scale * cosine(query, class text embedding): [N, C]."""
    _check_dims(queries, text_classifier, "queries", "text_classifier")
    return scale * (l2_normalize(queries) @ l2_normalize(text_classifier).T)


def tip_affinity(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Cosine similarity of each query to each support key: [N, S]."""
    _check_dims(queries, keys, "queries", "keys")
    return l2_normalize(queries) @ l2_normalize(keys).T


def coder_affinity(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Cosine of CODER vectors, min-max normalised per query row: (A - min_row) / (max_row - min_row).

    A row whose cosines are all equal becomes all zeros.
    """
    a = tip_affinity(queries, keys)
    lo = a.min(axis=1, keepdims=True)
    span = a.max(axis=1, keepdims=True) - lo
    return np.divide(a - lo, span, out=np.zeros_like(a), where=span > 0)


def cache_logits(affinity: np.ndarray, support_onehot: np.ndarray, beta: float) -> np.ndarray:
    """Tip-Adapter cache scores exp(-beta * (1 - A)) @ onehot: [N, C]."""
    if affinity.shape[1] != support_onehot.shape[0]:
        raise ValueError(
            f"affinity has {affinity.shape[1]} support columns but support_onehot has {support_onehot.shape[0]} rows; "
            "compute both from the same support set"
        )
    return np.exp(-beta * (1.0 - affinity)).astype(np.float32) @ support_onehot


def class_prototypes(support: np.ndarray, support_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """L2-normalised mean of the L2-normalised support embeddings of each class: [C, D]."""
    onehot = one_hot(support_labels, num_classes)
    counts = onehot.sum(axis=0)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"classes {missing[:10]} have no support sample; sample at least one shot per class")
    return l2_normalize((onehot.T @ l2_normalize(support)) / counts[:, None])


def prototype_logits(
    queries: np.ndarray, support: np.ndarray, support_labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Cosine similarity of each query to each class prototype: [N, C]."""
    _check_dims(queries, support, "queries", "support")
    return l2_normalize(queries) @ class_prototypes(support, support_labels, num_classes).T


def tip_adapter_logits(
    queries: np.ndarray,
    support: np.ndarray,
    support_labels: np.ndarray,
    text_classifier: np.ndarray,
    alpha: float,
    beta: float,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """Tip-Adapter: 100 * X @ W.T + alpha * exp(-beta * (1 - X @ K.T)) @ onehot, all of X, W, K row-normalised."""
    onehot = one_hot(support_labels, text_classifier.shape[0])
    keys = l2_normalize(support)
    out = [
        zero_shot_logits(q, text_classifier) + alpha * cache_logits(tip_affinity(q, keys), onehot, beta)
        for q in _row_chunks(queries, chunk_rows)
    ]
    return np.concatenate(out) if out else np.zeros((0, text_classifier.shape[0]), dtype=np.float32)


def coder_adapter_logits(
    queries: np.ndarray,
    support: np.ndarray,
    support_labels: np.ndarray,
    zero_shot: np.ndarray,
    alpha: float,
    beta: float,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """CODER-Adapter: zero_shot + alpha * exp(-beta * (1 - minmax_row(Q @ K.T))) @ onehot on CODER vectors.

    `zero_shot` is the caller's [N, C] CODER zero-shot score matrix for the same queries, used as given.
    """
    zero_shot = np.asarray(zero_shot, dtype=np.float32)
    if zero_shot.shape[0] != len(queries):
        raise ValueError(f"zero_shot has {zero_shot.shape[0]} rows for {len(queries)} queries; pass scores per query")
    onehot = one_hot(support_labels, zero_shot.shape[1])
    keys = l2_normalize(support)
    out = [cache_logits(coder_affinity(q, keys), onehot, beta) for q in _row_chunks(queries, chunk_rows)]
    cache = np.concatenate(out) if out else np.zeros_like(zero_shot)
    return zero_shot + alpha * cache


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (ties go to the lowest class index)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of zero samples is undefined; pass a non-empty split")
    return float((np.argmax(logits, axis=1) == labels).mean())


@dataclass(frozen=True)
class AlphaBeta:
    """Chosen cache weight alpha and sharpness beta, with the validation accuracy they reach (None if not measured)."""

    alpha: float
    beta: float
    val_accuracy: float | None
    mode: str
    evaluated: int = 0  # number of (alpha, beta) pairs tried


def tune_alpha_beta(
    val_zero_shot: np.ndarray | None,
    val_affinity: np.ndarray | None,
    support_labels: np.ndarray,
    val_labels: np.ndarray | None,
    *,
    mode: Literal["grid", "fixed"] = "grid",
    alpha: float = 1.0,
    beta: float = 1.0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    betas: Sequence[float] = DEFAULT_BETAS,
    refine_steps: int = 0,
) -> AlphaBeta:
    """Choose (alpha, beta) maximising validation top-1 of val_zero_shot + alpha * cache_logits(val_affinity, beta).

    Takes validation arrays only (never test data). val_affinity is tip_affinity or coder_affinity of the validation
    queries to the support keys. mode="grid" searches betas x alphas (ties: first in beta-then-alpha order); with
    refine_steps > 0 a second grid of refine_steps x refine_steps points spans the grid neighbours (grids ascending)
    of the coarse best and replaces it only when strictly better. mode="fixed" returns alpha, beta as given, with
    their validation accuracy when validation arrays are passed.
    """
    if mode not in ("grid", "fixed"):
        raise ValueError(f"mode must be 'grid' or 'fixed', got {mode!r}")
    have_val = val_zero_shot is not None and val_affinity is not None and val_labels is not None
    if mode == "fixed":
        if not have_val:
            return AlphaBeta(alpha, beta, None, "fixed", 0)
        acc = _val_accuracies(val_zero_shot, val_affinity, support_labels, val_labels, [alpha], [beta])[0, 0]
        return AlphaBeta(alpha, beta, float(acc), "fixed", 1)
    if not have_val:
        raise ValueError("mode='grid' needs val_zero_shot, val_affinity and val_labels; or use mode='fixed'")
    if len(alphas) == 0 or len(betas) == 0:
        raise ValueError(f"grid search needs non-empty alphas and betas, got {list(alphas)} and {list(betas)}")
    alphas, betas = [float(a) for a in alphas], [float(b) for b in betas]
    accs = _val_accuracies(val_zero_shot, val_affinity, support_labels, val_labels, alphas, betas)
    ib, ia = np.unravel_index(int(np.argmax(accs)), accs.shape)
    best = AlphaBeta(alphas[ia], betas[ib], float(accs[ib, ia]), "grid", accs.size)
    if refine_steps > 0:
        fine_a = _between_neighbours(alphas, ia, refine_steps)
        fine_b = _between_neighbours(betas, ib, refine_steps)
        fine = _val_accuracies(val_zero_shot, val_affinity, support_labels, val_labels, fine_a, fine_b)
        jb, ja = np.unravel_index(int(np.argmax(fine)), fine.shape)
        evaluated = accs.size + fine.size
        if fine[jb, ja] > best.val_accuracy:
            best = AlphaBeta(fine_a[ja], fine_b[jb], float(fine[jb, ja]), "grid", evaluated)
        else:
            best = AlphaBeta(best.alpha, best.beta, best.val_accuracy, "grid", evaluated)
    return best


def _val_accuracies(
    zero_shot: np.ndarray,
    affinity: np.ndarray,
    support_labels: np.ndarray,
    labels: np.ndarray,
    alphas: Sequence[float],
    betas: Sequence[float],
) -> np.ndarray:
    """[len(betas), len(alphas)] validation accuracies."""
    zero_shot = np.asarray(zero_shot, dtype=np.float32)
    affinity = np.asarray(affinity, dtype=np.float32)
    labels = np.asarray(labels)
    if not (zero_shot.shape[0] == affinity.shape[0] == len(labels)):
        raise ValueError(
            f"validation arrays disagree on rows: zero_shot {zero_shot.shape}, affinity {affinity.shape}, "
            f"labels {labels.shape}; compute them from the same validation samples"
        )
    onehot = one_hot(support_labels, zero_shot.shape[1])
    out = np.zeros((len(betas), len(alphas)))
    for ib, b in enumerate(betas):
        cache = cache_logits(affinity, onehot, b)
        for ia, a in enumerate(alphas):
            out[ib, ia] = accuracy(zero_shot + a * cache, labels)
    return out


def _between_neighbours(values: list[float], i: int, steps: int) -> list[float]:
    """`steps` evenly spaced values from the grid neighbour before values[i] to the one after (duplicates dropped)."""
    lo, hi = values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]
    return list(dict.fromkeys(np.linspace(lo, hi, steps).tolist()))


def _row_chunks(x: np.ndarray, rows: int) -> list[np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    return [x[i : i + rows] for i in range(0, len(x), rows)]


def _check_dims(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if np.ndim(a) != 2 or np.ndim(b) != 2 or np.shape(a)[1] != np.shape(b)[1]:
        raise ValueError(
            f"{name_a} {np.shape(a)} and {name_b} {np.shape(b)} must be 2-D with the same embedding width; "
            "use embeddings from the same model (and the same text bank for CODER vectors)"
        )
