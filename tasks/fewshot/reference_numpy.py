"""Reference numpy implementation of the few-shot logits and searches; tasks/fewshot/methods.py (torch) must equal it.

Training-free few-shot logits (prototype, Tip-Adapter, CODER-Adapter, Tip-X) and their searches on validation data.

All functions take and return numpy arrays (float32); rows are samples. Cache methods share one form:
    logits = zero_shot + alpha * exp(-beta * (1 - A)) @ onehot(support_labels)
with A the query-to-support affinity: plain cosine for Tip-Adapter (Zhang et al. 2022; gaopengcuhk/Tip-Adapter
main.py:32-42), per-row min-max normalised cosine of CODER vectors for the CODER-Adapter (YCaigogogo/CVPR24-CODER
utils.py:63-86). Tip-X (akres001/CLIP_fewshot_imo utils.py:132-204) adds gamma * (-scaled KL) @ onehot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from coderflow.tasks.classify.methods import l2_normalize, softmax
from coderflow.tasks.fewshot.methods import (  # the grids, the tie rule and the result: one definition for both
    AlphaBeta,
    SearchOrder,
    between_neighbours,
    check_dims,
    first_maximum,
    one_hot,
    scale_into,
    tip_grid,
)
from coderflow.tasks.fewshot.methods import (
    accuracy as accuracy,  # re-exported: the reference's accuracy is the shared one
)

CHUNK_ROWS = 4096  # query rows per block, bounds the affinity matrix held in memory
SEARCH_CELLS = 1 << 24  # rows x alphas x classes evaluated at once by the grid search (64 MiB of float32)

DEFAULT_BETAS, DEFAULT_ALPHAS = (tuple(g) for g in tip_grid())


def zero_shot_logits(queries: np.ndarray, text_classifier: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """scale * cosine(query, class text embedding): [N, C]."""
    check_dims(queries, text_classifier, "queries", "text_classifier")
    return scale * (l2_normalize(queries) @ l2_normalize(text_classifier).T)


def tip_affinity(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Cosine similarity of each query to each support key: [N, S]."""
    check_dims(queries, keys, "queries", "keys")
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
    check_dims(queries, support, "queries", "support")
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
    val_kl: np.ndarray | None = None,
    gammas: Sequence[float] = (0.0,),
    gamma: float = 0.0,
    order: SearchOrder = "beta_first",
) -> AlphaBeta:
    """Choose (alpha, beta[, gamma]) maximising validation top-1 of
    val_zero_shot + gamma * val_kl + alpha * cache_logits(val_affinity, beta).

    Takes validation arrays only (never test data). val_affinity is tip_affinity or coder_affinity of the validation
    queries to the support keys; val_kl (Tip-X) is tip_x_kl_logits of the same queries. mode="grid" searches the
    grids and breaks ties as the reference's nested loops with a strict `>` do, keeping the first maximum in loop
    order: `order="beta_first"` loops betas, then gammas, then alphas (Tip-Adapter utils.py:109-110, CODER
    classify_few_shot.py:56-57); `order="alpha_first"` loops alphas, then betas, then gammas (IMO run.py:281-282,
    343-345). With refine_steps > 0 a second grid of refine_steps x refine_steps points spans the grid neighbours
    (grids ascending) of the coarse best alpha and beta, searched in the same order, and replaces it only when
    strictly better. mode="fixed" returns the values as given, with their validation accuracy when validation arrays
    are passed.
    """
    if mode not in ("grid", "fixed"):
        raise ValueError(f"mode must be 'grid' or 'fixed', got {mode!r}")
    if order not in ("beta_first", "alpha_first"):
        raise ValueError(f"order must be 'beta_first' or 'alpha_first', got {order!r}")
    have_val = val_zero_shot is not None and val_affinity is not None and val_labels is not None
    if mode == "fixed":
        if not have_val:
            return AlphaBeta(alpha, beta, None, "fixed", 0, gamma)
        acc = grid_accuracies(val_zero_shot, val_affinity, support_labels, val_labels, [alpha], [beta], val_kl, [gamma])
        return AlphaBeta(alpha, beta, float(acc[0, 0, 0]), "fixed", 1, gamma)
    if not have_val:
        raise ValueError("mode='grid' needs val_zero_shot, val_affinity and val_labels; or use mode='fixed'")
    if len(alphas) == 0 or len(betas) == 0 or len(gammas) == 0:
        raise ValueError(f"grid search needs non-empty grids, got {list(alphas)}, {list(betas)}, {list(gammas)}")
    alphas, betas, gammas = [float(a) for a in alphas], [float(b) for b in betas], [float(g) for g in gammas]
    accs = grid_accuracies(val_zero_shot, val_affinity, support_labels, val_labels, alphas, betas, val_kl, gammas)
    ib, ig, ia = first_maximum(accs, order)
    best = AlphaBeta(alphas[ia], betas[ib], float(accs[ib, ig, ia]), "grid", accs.size, gammas[ig])
    if refine_steps > 0:
        fine_a = between_neighbours(alphas, ia, refine_steps)
        fine_b = between_neighbours(betas, ib, refine_steps)
        fine = grid_accuracies(
            val_zero_shot, val_affinity, support_labels, val_labels, fine_a, fine_b, val_kl, [best.gamma]
        )
        jb, _, ja = first_maximum(fine, order)
        fine = fine[:, 0, :]
        evaluated = accs.size + fine.size
        if fine[jb, ja] > best.val_accuracy:
            best = AlphaBeta(fine_a[ja], fine_b[jb], float(fine[jb, ja]), "grid", evaluated, best.gamma)
        else:
            best = AlphaBeta(best.alpha, best.beta, best.val_accuracy, "grid", evaluated, best.gamma)
    return best


def coder_adapter_search(
    val_zero_shot: np.ndarray,
    val_affinity: np.ndarray,
    support_labels: np.ndarray,
    val_labels: np.ndarray,
    *,
    beta_range: tuple[float, float] = (0.1, 200.0),
    alpha_range: tuple[float, float] = (0.1, 20.0),
    steps: tuple[int, int] = (500, 50),
    rounds: int = 3,
) -> AlphaBeta:
    """CODER-Adapter's search (CVPR24-CODER classify_few_shot.py:37-70): a grid of steps[0] betas x steps[1] alphas
    over [min, max) (endpoint excluded), then `rounds - 1` more grids over [0.5, 1.5] x the best values; validation
    data only. As the reference, each round keeps its own best (betas outer, alphas inner, the first maximum; a round
    where no point beats accuracy 0 keeps (0, 0)), the next round zooms around it, and the last round's best is
    returned, even when an earlier round scored higher.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: search at least one round")
    (b_lo, b_hi), (a_lo, a_hi) = beta_range, alpha_range
    labels = (support_labels, val_labels)
    best: AlphaBeta | None = None
    evaluated = 0
    for _ in range(rounds):
        betas = [i * (b_hi - b_lo) / steps[0] + b_lo for i in range(steps[0])]
        alphas = [i * (a_hi - a_lo) / steps[1] + a_lo for i in range(steps[1])]
        best = tune_alpha_beta(val_zero_shot, val_affinity, *labels, alphas=alphas, betas=betas, order="beta_first")
        evaluated += best.evaluated
        if not best.val_accuracy:  # the reference's `best_beta, best_alpha = 0, 0` when nothing beats 0
            best = tune_alpha_beta(val_zero_shot, val_affinity, *labels, mode="fixed", alpha=0.0, beta=0.0)
        (b_lo, b_hi), (a_lo, a_hi) = (0.5 * best.beta, 1.5 * best.beta), (0.5 * best.alpha, 1.5 * best.alpha)
    assert best is not None
    return AlphaBeta(best.alpha, best.beta, best.val_accuracy, "grid", evaluated)


def grid_accuracies(
    zero_shot: np.ndarray,
    affinity: np.ndarray,
    support_labels: np.ndarray,
    labels: np.ndarray,
    alphas: Sequence[float],
    betas: Sequence[float],
    kl_logits: np.ndarray | None = None,
    gammas: Sequence[float] = (0.0,),
) -> np.ndarray:
    """[len(betas), len(gammas), len(alphas)] validation accuracies of zero_shot + gamma * kl_logits + alpha * cache,
    all alphas of a (beta, gamma) at once, in blocks of rows bounded by SEARCH_CELLS."""
    zero_shot = np.asarray(zero_shot, dtype=np.float32)
    affinity = np.asarray(affinity, dtype=np.float32)
    labels = np.asarray(labels)
    if not (zero_shot.shape[0] == affinity.shape[0] == len(labels)):
        raise ValueError(
            f"validation arrays disagree on rows: zero_shot {zero_shot.shape}, affinity {affinity.shape}, "
            f"labels {labels.shape}; compute them from the same validation samples"
        )
    if kl_logits is not None and np.shape(kl_logits) != zero_shot.shape:
        raise ValueError(f"kl_logits {np.shape(kl_logits)} must have the zero-shot shape {zero_shot.shape}")
    onehot = one_hot(support_labels, zero_shot.shape[1])
    a = np.asarray(alphas, dtype=np.float32)
    rows = max(1, SEARCH_CELLS // max(1, len(a) * zero_shot.shape[1]))
    correct = np.zeros((len(betas), len(gammas), len(a)), dtype=np.int64)
    for ib, b in enumerate(betas):
        cache = cache_logits(affinity, onehot, b)
        for ig, g in enumerate(gammas):
            base = zero_shot if kl_logits is None or g == 0 else zero_shot + np.float32(g) * kl_logits
            for i in range(0, len(labels), rows):
                sl = slice(i, i + rows)
                logits = base[sl, None, :] + a[None, :, None] * cache[sl, None, :]  # (rows, alphas, classes)
                correct[ib, ig] += (logits.argmax(axis=2) == labels[sl, None]).sum(axis=0)
    return correct / max(1, len(labels))


# Tip-X ---------------------------------------------------------------------------------------------------
def class_distribution(x: np.ndarray, text_classifier: np.ndarray, temperature: float = 0.5) -> np.ndarray:
    """softmax(cos(x, W) / temperature): Tip-X's class distribution of each image (CLIP_fewshot_imo utils.py:171-186,
    temp 0.5, no x100)."""
    check_dims(x, text_classifier, "x", "text_classifier")
    return softmax((l2_normalize(x) @ l2_normalize(text_classifier).T) / temperature).astype(np.float32)


def kl_matrix(query_dist: np.ndarray, support_dist: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """KL(p_query || p_support) for every (query, support) pair: [N, S] (CLIP_fewshot_imo utils.py:152-168, every row
    computed; the reference leaves the last N mod 100 rows at zero)."""
    p = np.clip(np.asarray(query_dist, dtype=np.float64), eps, None)
    q = np.clip(np.asarray(support_dist, dtype=np.float64), eps, None)
    return ((p * np.log(p)).sum(axis=1, keepdims=True) - p @ np.log(q).T).astype(np.float32)


def tip_x_kl_logits(
    query_dist: np.ndarray, support_dist: np.ndarray, affinity: np.ndarray, support_onehot: np.ndarray
) -> np.ndarray:
    """Tip-X's KL term before gamma: (-scale_into(KL, affinity)) @ onehot, [N, C]; `affinity` is the same queries'
    cache affinity (its range is the target of the scaling)."""
    return -scale_into(kl_matrix(query_dist, support_dist), affinity) @ support_onehot


def tip_x_logits(
    zero_shot: np.ndarray,
    affinity: np.ndarray,
    kl_logits: np.ndarray,
    support_labels: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
) -> np.ndarray:
    """Tip-X: zero_shot + gamma * kl_logits + alpha * exp(-beta * (1 - A)) @ onehot (CLIP_fewshot_imo
    utils.py:198-204)."""
    onehot = one_hot(support_labels, np.shape(zero_shot)[1])
    return zero_shot + gamma * kl_logits + alpha * cache_logits(affinity, onehot, beta)


def _row_chunks(x: np.ndarray, rows: int) -> list[np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    return [x[i : i + rows] for i in range(0, len(x), rows)]
