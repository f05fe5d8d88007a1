"""Training-free few-shot logits (prototype, Tip-Adapter, CODER-Adapter, Tip-X) and their searches, in torch on a device.

Cache methods share one form:
    logits = zero_shot + alpha * exp(-beta * (1 - A)) @ onehot(support_labels)
with A the query-to-support affinity: plain cosine for Tip-Adapter (Zhang et al. 2022; gaopengcuhk/Tip-Adapter
main.py:32-42), per-row min-max normalised cosine of CODER vectors for the CODER-Adapter (YCaigogogo/CVPR24-CODER
utils.py:63-86). Tip-X (akres001/CLIP_fewshot_imo utils.py:132-204) adds gamma * (-scaled KL) @ onehot.

Inputs and outputs are numpy arrays, rows are samples; a function with a `device` keyword ('cpu', 'cuda', 'cuda:1')
converts its inputs there, computes there in blocks of rows sized from the device's free memory
(torch.cuda.mem_get_info on CUDA, CPU_BUDGET on the CPU) and returns numpy. Every step keeps the dtype of the numpy
reference (tasks/fewshot/reference_numpy.py): float32 throughout (TF32 off), except the softmax of
class_distribution and the KL matrix, float64 as there; a float64 input stays float64 where the reference's numpy
promotion keeps it so. Logits equal the reference's up to the rounding of the matrix products (and of exp on CUDA; on
the CPU the cache's exp is numpy's own), within 1e-4; searches count right answers exactly as the reference's argmax
over float32 logits would (fewshot.device.right_counts) and keep the first maximum in the reference's loop order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from coderflow.tasks.classify.methods import l2_normalize as l2_normalize  # re-exported: scorers use it from here
from coderflow.tasks.classify.methods import softmax as softmax
from coderflow.tasks.fewshot.device import (
    ValArrays,
    accuracy_grid,
    block_rows,
    cache_product,
    map_rows,
    matmul,
    minmax_rows,
    normalize,
    on_device,
    to_device,
    to_numpy,
)

if TYPE_CHECKING:
    import torch

SearchOrder = Literal["beta_first", "alpha_first"]  # loop nesting of a grid search, outermost first (tie order)

CHUNK_ROWS = 4096  # at most this many query rows per block of tip_adapter_logits / coder_adapter_logits

# IMO's grids (CLIP_fewshot_imo run.py:42-47), endpoints included
IMO_ALPHAS: tuple[float, ...] = tuple(np.linspace(0, 20, 200).tolist())
IMO_BETAS: tuple[float, ...] = tuple(np.linspace(0, 20, 20).tolist())
IMO_GAMMAS: tuple[float, ...] = tuple(np.linspace(0, 30, 50).tolist())


def tip_grid(
    scale: tuple[float, float] = (7.0, 3.0), steps: tuple[int, int] = (200, 20)
) -> tuple[list[float], list[float]]:
    """Tip-Adapter's (betas, alphas): `[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]`, the endpoint excluded
    (Tip-Adapter utils.py:103-104; `search_scale` per dataset in its configs, ImageNet [7, 3])."""
    betas = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    return betas, alphas


DEFAULT_BETAS, DEFAULT_ALPHAS = (tuple(g) for g in tip_grid())


# logits ----------------------------------------------------------------------------------------------------
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


def zero_shot_logits(
    queries: np.ndarray, text_classifier: np.ndarray, scale: float = 100.0, *, device: str = "cpu"
) -> np.ndarray:
    """scale * cosine(query, class text embedding): [N, C]."""
    check_dims(queries, text_classifier, "queries", "text_classifier")
    with on_device(device) as dev:
        q, w = to_device(queries, dev, np.float32), normalize(to_device(text_classifier, dev, np.float32))
        rows = block_rows(4 * (q.shape[1] + 2 * w.shape[0]), dev)
        return map_rows(lambda s: scale * (normalize(q[s]) @ w.T), len(q), rows)


def tip_affinity(queries: np.ndarray, keys: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """Cosine similarity of each query to each support key: [N, S]."""
    check_dims(queries, keys, "queries", "keys")
    with on_device(device) as dev:
        q, k = to_device(queries, dev, np.float32), normalize(to_device(keys, dev, np.float32))
        return map_rows(lambda s: normalize(q[s]) @ k.T, len(q), block_rows(4 * (q.shape[1] + 2 * len(k)), dev))


def coder_affinity(queries: np.ndarray, keys: np.ndarray, *, device: str = "cpu") -> np.ndarray:
    """Cosine of CODER vectors, min-max normalised per query row: (A - min_row) / (max_row - min_row).

    A row whose cosines are all equal becomes all zeros.
    """
    check_dims(queries, keys, "queries", "keys")
    with on_device(device) as dev:
        q, k = to_device(queries, dev, np.float32), normalize(to_device(keys, dev, np.float32))
        rows = block_rows(4 * (q.shape[1] + 4 * len(k)), dev)
        return map_rows(lambda s: minmax_rows(normalize(q[s]) @ k.T), len(q), rows)


def cache_logits(affinity: np.ndarray, support_onehot: np.ndarray, beta: float, *, device: str = "cpu") -> np.ndarray:
    """Tip-Adapter cache scores exp(-beta * (1 - A)) @ onehot: [N, C]."""
    if affinity.shape[1] != support_onehot.shape[0]:
        raise ValueError(
            f"affinity has {affinity.shape[1]} support columns but support_onehot has {support_onehot.shape[0]} rows; "
            "compute both from the same support set"
        )
    work = (-beta * (1.0 - np.asarray(affinity)[:0])).dtype  # the reference's dtype for the exp (numpy promotion)
    with on_device(device) as dev:
        a, onehot = to_device(affinity, dev, work), to_device(support_onehot, dev)
        rows = block_rows(a.element_size() * 3 * a.shape[1] + 8 * onehot.shape[1], dev)
        return map_rows(lambda s: cache_product(a[s], onehot, float(beta)), len(a), rows)


def class_prototypes(
    support: np.ndarray, support_labels: np.ndarray, num_classes: int, *, device: str = "cpu"
) -> np.ndarray:
    """L2-normalised mean of the L2-normalised support embeddings of each class: [C, D]."""
    onehot = one_hot(support_labels, num_classes)
    counts = onehot.sum(axis=0)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"classes {missing[:10]} have no support sample; sample at least one shot per class")
    with on_device(device) as dev:
        sums = to_device(onehot, dev).T @ normalize(to_device(support, dev, np.float32))
        return to_numpy(normalize(sums / to_device(counts, dev)[:, None]))


def prototype_logits(
    queries: np.ndarray, support: np.ndarray, support_labels: np.ndarray, num_classes: int, *, device: str = "cpu"
) -> np.ndarray:
    """Cosine similarity of each query to each class prototype: [N, C]."""
    check_dims(queries, support, "queries", "support")
    protos = class_prototypes(support, support_labels, num_classes, device=device)
    with on_device(device) as dev:
        q, p = to_device(queries, dev, np.float32), to_device(protos, dev)
        return map_rows(lambda s: normalize(q[s]) @ p.T, len(q), block_rows(4 * (q.shape[1] + 2 * len(p)), dev))


def tip_adapter_logits(
    queries: np.ndarray,
    support: np.ndarray,
    support_labels: np.ndarray,
    text_classifier: np.ndarray,
    alpha: float,
    beta: float,
    chunk_rows: int = CHUNK_ROWS,
    *,
    device: str = "cpu",
) -> np.ndarray:
    """Tip-Adapter: 100 * X @ W.T + alpha * exp(-beta * (1 - X @ K.T)) @ onehot, all of X, W, K row-normalised."""
    check_dims(queries, text_classifier, "queries", "text_classifier")
    check_dims(queries, support, "queries", "support")
    with on_device(device) as dev:
        onehot = to_device(one_hot(support_labels, text_classifier.shape[0]), dev)
        keys = normalize(normalize(to_device(support, dev, np.float32)))  # the reference normalises the keys twice
        w, q = normalize(to_device(text_classifier, dev, np.float32)), to_device(queries, dev, np.float32)

        def block(s: slice) -> torch.Tensor:
            x = normalize(q[s])
            return 100.0 * (x @ w.T) + alpha * cache_product(x @ keys.T, onehot, float(beta))

        return map_rows(block, len(q), block_rows(4 * (q.shape[1] + 3 * len(keys) + 3 * len(w)), dev, chunk_rows))


def coder_adapter_logits(
    queries: np.ndarray,
    support: np.ndarray,
    support_labels: np.ndarray,
    zero_shot: np.ndarray,
    alpha: float,
    beta: float,
    chunk_rows: int = CHUNK_ROWS,
    *,
    device: str = "cpu",
) -> np.ndarray:
    """CODER-Adapter: zero_shot + alpha * exp(-beta * (1 - minmax_row(Q @ K.T))) @ onehot on CODER vectors.

    `zero_shot` is the caller's [N, C] CODER zero-shot score matrix for the same queries, used as given.
    """
    zero_shot = np.asarray(zero_shot, dtype=np.float32)
    if zero_shot.shape[0] != len(queries):
        raise ValueError(f"zero_shot has {zero_shot.shape[0]} rows for {len(queries)} queries; pass scores per query")
    check_dims(queries, support, "queries", "support")
    with on_device(device) as dev:
        onehot = to_device(one_hot(support_labels, zero_shot.shape[1]), dev)
        keys = normalize(normalize(to_device(support, dev, np.float32)))
        q, zs = to_device(queries, dev, np.float32), to_device(zero_shot, dev)

        def block(s: slice) -> torch.Tensor:
            return zs[s] + alpha * cache_product(minmax_rows(normalize(q[s]) @ keys.T), onehot, float(beta))

        return map_rows(block, len(q), block_rows(4 * (q.shape[1] + 4 * len(keys) + 3 * zs.shape[1]), dev, chunk_rows))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (ties go to the lowest class index)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("accuracy of zero samples is undefined; pass a non-empty split")
    return float((np.argmax(logits, axis=1) == labels).mean())


# searches --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlphaBeta:
    """Chosen cache weight alpha, sharpness beta and KL weight gamma (Tip-X; 0 otherwise), with the validation
    accuracy they reach (None if not measured)."""

    alpha: float
    beta: float
    val_accuracy: float | None
    mode: str
    evaluated: int = 0  # number of (alpha, beta[, gamma]) points tried
    gamma: float = 0.0


def _val(
    zero_shot: np.ndarray, affinity: np.ndarray, support_labels: np.ndarray, labels: np.ndarray, kl: Any, dev: Any
) -> ValArrays:
    zero_shot, affinity, labels = (
        np.asarray(zero_shot, np.float32),
        np.asarray(affinity, np.float32),
        np.asarray(labels),
    )
    if not (zero_shot.shape[0] == affinity.shape[0] == len(labels)):
        raise ValueError(
            f"validation arrays disagree on rows: zero_shot {zero_shot.shape}, affinity {affinity.shape}, "
            f"labels {labels.shape}; compute them from the same validation samples"
        )
    if kl is not None and np.shape(kl) != zero_shot.shape:
        raise ValueError(f"kl_logits {np.shape(kl)} must have the zero-shot shape {zero_shot.shape}")
    onehot = one_hot(support_labels, zero_shot.shape[1])
    kl_t = None if kl is None else to_device(kl, dev)
    return ValArrays(
        to_device(zero_shot, dev),
        to_device(affinity, dev),
        to_device(onehot, dev),
        to_device(labels, dev, np.int64),
        kl_t,
    )


def _fixed(v: ValArrays, alpha: float, beta: float, gamma: float) -> AlphaBeta:
    return AlphaBeta(alpha, beta, float(accuracy_grid(v, [alpha], [beta], [gamma])[0, 0, 0]), "fixed", 1, gamma)


def _search(
    v: ValArrays,
    alphas: Sequence[float],
    betas: Sequence[float],
    gammas: Sequence[float],
    refine: int,
    order: SearchOrder,
) -> AlphaBeta:
    if len(alphas) == 0 or len(betas) == 0 or len(gammas) == 0:
        raise ValueError(f"grid search needs non-empty grids, got {list(alphas)}, {list(betas)}, {list(gammas)}")
    alphas, betas, gammas = [float(a) for a in alphas], [float(b) for b in betas], [float(g) for g in gammas]
    accs = accuracy_grid(v, alphas, betas, gammas)
    ib, ig, ia = first_maximum(accs, order)
    best = AlphaBeta(alphas[ia], betas[ib], float(accs[ib, ig, ia]), "grid", accs.size, gammas[ig])
    if refine > 0:
        fine_a, fine_b = between_neighbours(alphas, ia, refine), between_neighbours(betas, ib, refine)
        fine = accuracy_grid(v, fine_a, fine_b, [best.gamma])
        jb, _, ja = first_maximum(fine, order)
        fine = fine[:, 0, :]
        evaluated = accs.size + fine.size
        if fine[jb, ja] > best.val_accuracy:
            best = AlphaBeta(fine_a[ja], fine_b[jb], float(fine[jb, ja]), "grid", evaluated, best.gamma)
        else:
            best = AlphaBeta(best.alpha, best.beta, best.val_accuracy, "grid", evaluated, best.gamma)
    return best


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
    device: str = "cpu",
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
    are passed. Logits are float32 (float64 where val_kl is float64), as in the numpy reference.
    """
    if mode not in ("grid", "fixed"):
        raise ValueError(f"mode must be 'grid' or 'fixed', got {mode!r}")
    if order not in ("beta_first", "alpha_first"):
        raise ValueError(f"order must be 'beta_first' or 'alpha_first', got {order!r}")
    have_val = val_zero_shot is not None and val_affinity is not None and val_labels is not None
    if mode == "fixed" and not have_val:
        return AlphaBeta(alpha, beta, None, "fixed", 0, gamma)
    if not have_val:
        raise ValueError("mode='grid' needs val_zero_shot, val_affinity and val_labels; or use mode='fixed'")
    with on_device(device) as dev:
        v = _val(val_zero_shot, val_affinity, support_labels, val_labels, val_kl, dev)
        if mode == "fixed":
            return _fixed(v, alpha, beta, gamma)
        return _search(v, alphas, betas, gammas, refine_steps, order)


def first_maximum(accs: np.ndarray, order: SearchOrder = "beta_first") -> tuple[int, int, int]:
    """(beta, gamma, alpha) indices of the first maximum of a [betas, gammas, alphas] accuracy grid in the loop order
    of `order` (see tune_alpha_beta): the point a reference's nested loops keep with `if acc > best_acc`."""
    scan = accs if order == "beta_first" else accs.transpose(2, 0, 1)  # alpha_first: [alphas, betas, gammas]
    i, j, k = (int(v) for v in np.unravel_index(int(np.argmax(scan)), scan.shape))  # argmax: first in C order
    return (i, j, k) if order == "beta_first" else (j, k, i)


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
    device: str = "cpu",
) -> AlphaBeta:
    """CODER-Adapter's search (CVPR24-CODER classify_few_shot.py:37-70): a grid of steps[0] betas x steps[1] alphas
    over [min, max) (endpoint excluded), then `rounds - 1` more grids over [0.5, 1.5] x the best values; validation
    data only. As the reference, each round keeps its own best (betas outer, alphas inner, the first maximum; a round
    where no point beats accuracy 0 keeps (0, 0)), the next round zooms around it, and the last round's best is
    returned, even when an earlier round scored higher. The validation arrays go to the device once.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: search at least one round")
    (b_lo, b_hi), (a_lo, a_hi) = beta_range, alpha_range
    best: AlphaBeta | None = None
    evaluated = 0
    with on_device(device) as dev:
        v = _val(val_zero_shot, val_affinity, support_labels, val_labels, None, dev)
        for _ in range(rounds):
            betas = [i * (b_hi - b_lo) / steps[0] + b_lo for i in range(steps[0])]
            alphas = [i * (a_hi - a_lo) / steps[1] + a_lo for i in range(steps[1])]
            best = _search(v, alphas, betas, [0.0], 0, "beta_first")
            evaluated += best.evaluated
            if not best.val_accuracy:  # the reference's `best_beta, best_alpha = 0, 0` when nothing beats 0
                best = _fixed(v, 0.0, 0.0, 0.0)
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
    *,
    device: str = "cpu",
) -> np.ndarray:
    """[len(betas), len(gammas), len(alphas)] validation accuracies of zero_shot + gamma * kl_logits + alpha * cache:
    each beta's exp once per block of rows, all alphas of a (beta, gamma) as one broadcast, counted on the device."""
    with on_device(device) as dev:
        return accuracy_grid(_val(zero_shot, affinity, support_labels, labels, kl_logits, dev), alphas, betas, gammas)


# Tip-X ---------------------------------------------------------------------------------------------------
def class_distribution(
    x: np.ndarray, text_classifier: np.ndarray, temperature: float = 0.5, *, device: str = "cpu"
) -> np.ndarray:
    """softmax(cos(x, W) / temperature): Tip-X's class distribution of each image (CLIP_fewshot_imo utils.py:171-186,
    temp 0.5, no x100); the softmax in float64 as the reference's."""
    check_dims(x, text_classifier, "x", "text_classifier")
    with on_device(device) as dev:
        q, w = to_device(x, dev, np.float32), normalize(to_device(text_classifier, dev, np.float32))

        def block(s: slice) -> torch.Tensor:
            z = ((normalize(q[s]) @ w.T) / temperature).double()
            z = (z - z.amax(dim=1, keepdim=True)).exp_()
            return (z / z.sum(dim=1, keepdim=True)).float()

        return map_rows(block, len(q), block_rows(4 * q.shape[1] + 32 * len(w), dev))


def kl_matrix(
    query_dist: np.ndarray, support_dist: np.ndarray, eps: float = 1e-12, *, device: str = "cpu"
) -> np.ndarray:
    """KL(p_query || p_support) for every (query, support) pair: [N, S], in float64 blocks of rows, returned float32
    (CLIP_fewshot_imo utils.py:152-168, every row computed; the reference leaves the last N mod 100 rows at zero)."""
    with on_device(device) as dev:
        p, q = to_device(query_dist, dev, np.float64), to_device(support_dist, dev, np.float64)
        log_q = q.clamp_min(eps).log_()

        def block(s: slice) -> torch.Tensor:
            ps = p[s].clamp_min(eps)
            return (ps @ log_q.T).sub_((ps * ps.log()).sum(dim=1, keepdim=True)).neg_().float()  # h - x, in place

        return map_rows(block, len(p), block_rows(8 * (3 * p.shape[1] + 2 * len(q)), dev))


def scale_into(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Global min-max of x mapped into [target.min(), target.max()] (CLIP_fewshot_imo utils.py:132-138)."""
    x = np.asarray(x, dtype=np.float32)
    lo, span = x.min(), x.max() - x.min()
    unit = (x - lo) / span if span > 0 else np.zeros_like(x)
    return unit * (target.max() - target.min()) + target.min()


def tip_x_kl_logits(
    query_dist: np.ndarray,
    support_dist: np.ndarray,
    affinity: np.ndarray,
    support_onehot: np.ndarray,
    *,
    device: str = "cpu",
) -> np.ndarray:
    """Tip-X's KL term before gamma: (-scale_into(KL, affinity)) @ onehot, [N, C]; `affinity` is the same queries'
    cache affinity (its range is the target of the scaling). The KL matrix is computed in blocks and held on the host
    between its global min-max and the product."""
    kl = kl_matrix(query_dist, support_dist, device=device)
    target = np.asarray(affinity)
    lo, span = kl.min(), kl.max() - kl.min()
    width, t_lo = target.max() - target.min(), target.min()
    wide = (np.zeros(1, np.float32) * width + t_lo).dtype == np.float64  # the reference's promotion
    with on_device(device) as dev:
        onehot = to_device(support_onehot, dev)

        def block(s: slice) -> torch.Tensor:
            k = to_device(kl[s], dev)
            unit = (k - float(lo)).div_(float(span)) if span > 0 else k.new_zeros(k.shape)
            unit = unit.double() if wide else unit
            return matmul(unit.mul_(float(width)).add_(float(t_lo)).neg_(), onehot)

        return map_rows(block, len(kl), block_rows(24 * kl.shape[1] + 8 * onehot.shape[1], dev))


def tip_x_logits(
    zero_shot: np.ndarray,
    affinity: np.ndarray,
    kl_logits: np.ndarray,
    support_labels: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
    *,
    device: str = "cpu",
) -> np.ndarray:
    """Tip-X: zero_shot + gamma * kl_logits + alpha * exp(-beta * (1 - A)) @ onehot (CLIP_fewshot_imo
    utils.py:198-204)."""
    onehot = one_hot(support_labels, np.shape(zero_shot)[1])
    cache = cache_logits(np.asarray(affinity), onehot, beta, device=device)
    with on_device(device) as dev:
        zs, kl, ca = to_device(zero_shot, dev), to_device(kl_logits, dev), to_device(cache, dev)
        return to_numpy(zs + gamma * kl + alpha * ca)


def between_neighbours(values: list[float], i: int, steps: int) -> list[float]:
    """`steps` evenly spaced values from the grid neighbour before values[i] to the one after (duplicates dropped)."""
    lo, hi = values[max(i - 1, 0)], values[min(i + 1, len(values) - 1)]
    return list(dict.fromkeys(np.linspace(lo, hi, steps).tolist()))


def check_dims(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if np.ndim(a) != 2 or np.ndim(b) != 2 or np.shape(a)[1] != np.shape(b)[1]:
        raise ValueError(
            f"{name_a} {np.shape(a)} and {name_b} {np.shape(b)} must be 2-D with the same embedding width; "
            "use embeddings from the same model (and the same text bank for CODER vectors)"
        )
