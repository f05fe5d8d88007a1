"""Torch plumbing of the few-shot methods: numpy in and out, row blocks sized from device memory, the search kernel.

The search kernel computes each beta's cache once per block of rows and counts the right answers of its whole
(gamma, alpha) grid from the margins' zero crossings (right_counts), on the device.

The operations repeat the numpy reference's (tasks/fewshot/reference_numpy.py) step by step and dtype by dtype, so that
results differ only by the rounding of products and exp.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from coderflow.tasks.classify.device import memory_budget
from coderflow.tasks.classify.device import on_device as on_device  # re-exported: fewshot.methods uses them from here
from coderflow.tasks.classify.device import to_device as to_device

if TYPE_CHECKING:
    import torch


def block_rows(row_bytes: int, dev: torch.device, cap: int | None = None) -> int:
    rows = max(1, memory_budget(str(dev)) // max(1, row_bytes))
    return min(rows, cap) if cap else rows


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def map_rows(fn: Callable[[slice], torch.Tensor], n: int, rows: int) -> np.ndarray:
    """fn over consecutive blocks of rows, results gathered on the host: one block is returned as it is (no copy),
    more are written into one array as they come (no list of blocks held beside it)."""
    if n <= rows:
        return np.ascontiguousarray(to_numpy(fn(slice(0, n))))
    first = to_numpy(fn(slice(0, rows)))
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    out[:rows] = first
    for i in range(rows, n, rows):
        out[i : i + rows] = to_numpy(fn(slice(i, i + rows)))
    return out


def normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """l2_normalize in torch (float32 rows scaled to unit norm)."""
    import torch

    x = x.float()
    return x / torch.clamp_min(torch.linalg.vector_norm(x, dim=-1, keepdim=True), eps)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with numpy's dtype promotion."""
    import torch

    dt = torch.promote_types(a.dtype, b.dtype)
    return a.to(dt) @ b.to(dt)


EXP_FLOOR = -87.0  # CPU exponents are raised to this: exp(-87) = 1.6e-38, above float32's subnormals (< 1.2e-38)
PARALLEL_ROWS = 1 << 20  # elements from which the CPU's exp is split by rows over torch's thread count


@dataclass
class CacheWork:
    """What every beta of a search reuses for one block of rows of A [rows, S]: 1 - A, a buffer of its shape (instead
    of allocating, and page-faulting, a fresh one per beta) and the largest 1 - A (whether exp can go subnormal).

    On the CPU, with a float32 one-hot, both are held transposed, [S, rows], the support in class order (stable:
    each class's images in support order), and `counts` holds the images per class: a class's exps are then
    consecutive rows, and its cache column is their sum in support order (class_sum)."""

    one_minus: torch.Tensor
    buffer: torch.Tensor
    widest: float
    counts: np.ndarray | None = None  # support images per class, when held transposed in class order

    @classmethod
    def of(cls, aff: torch.Tensor, onehot: torch.Tensor) -> CacheWork:
        import torch

        counts = None
        if aff.device.type == "cpu" and onehot.dtype == torch.float32 and _is_one_hot(onehot):
            labels = onehot.argmax(dim=1).numpy()
            counts = np.bincount(labels, minlength=onehot.shape[1])
            aff = aff.T[torch.from_numpy(np.argsort(labels, kind="stable"))]
        one_minus = (1.0 - aff).contiguous()
        widest = float(one_minus.max()) if one_minus.numel() else 0.0
        return cls(one_minus, torch.empty_like(one_minus), widest, counts)


def _is_one_hot(onehot: torch.Tensor) -> bool:
    return bool(((onehot == 0) | (onehot == 1)).all() & (onehot.sum(dim=1) == 1).all())


def cache_product(aff: torch.Tensor, onehot: torch.Tensor, beta: float, work: CacheWork | None = None) -> torch.Tensor:
    """exp(-beta * (1 - A)) as float32, @ onehot (the reference's cache_logits, same roundings). `work`: the caller's
    CacheWork of A and onehot (a search holds one per block of rows).

    On the CPU the multiply and the exp are numpy's ufuncs in place, split over torch's thread count (by classes; by
    rows when onehot is not a one-hot): the reference's own exp, bit for bit (torch's CPU exp differs from it in the last bit for about 40% of values).
    There, exponents below EXP_FLOOR (-87) are raised to it first: an exp under float32's smallest normal (1.2e-38)
    would send the exp and the product down the CPU's slow subnormal path (5x slower per beta); a cache logit moves
    by at most S x 1.6e-38, which leaves every logit above 1e-30 in magnitude bit for bit as it was. The product
    with a one-hot is then each class's sum (class_sum), a hundredth of the matmul's work at 100 classes."""
    import torch

    w = work or CacheWork.of(aff, onehot)
    if w.buffer.device.type != "cpu":
        return matmul(torch.mul(w.one_minus, -beta, out=w.buffer).exp_().float(), onehot)
    src, out = w.one_minus.numpy(), w.buffer.numpy()
    floor = -beta * w.widest < EXP_FLOOR

    def exps(rows: slice) -> np.ndarray:
        np.multiply(src[rows], -beta, out=out[rows])
        if floor:
            np.maximum(out[rows], EXP_FLOOR, out=out[rows])
        return np.exp(out[rows], out=out[rows])

    parts = torch.get_num_threads() if src.size >= PARALLEL_ROWS else 1
    if w.counts is None:
        _split(exps, len(src), parts)
        return matmul(w.buffer.float(), onehot)
    acc = np.zeros((len(w.counts), src.shape[1]), dtype=np.float32)
    ends = np.cumsum(w.counts).tolist()

    def classes(cs: slice) -> None:  # a class's exps are summed while they are in cache
        for c in range(cs.start, cs.stop):
            if w.counts[c]:
                class_sum(exps(slice(ends[c] - int(w.counts[c]), ends[c])), acc[c])

    _split(classes, len(w.counts), parts)
    return torch.from_numpy(acc).T.contiguous()


def class_sum(exps: np.ndarray, out: np.ndarray) -> None:
    """out = exps[0] + exps[1] + ... in row order, from zero, in float32: exactly the sums a BLAS kernel forms for a
    class's column of exps.T @ onehot when its support images are consecutive (every support set coderflow samples;
    measured equal bit for bit to numpy's and torch's matmul on x86-64), within an ulp or two otherwise."""
    rows = exps if exps.dtype == np.float32 else exps.astype(np.float32)  # the reference's astype before the product
    out[:] = rows[0]
    for row in rows[1:]:
        out += row


def _split(fn: Callable[[slice], Any], n: int, parts: int) -> None:
    """fn over `parts` consecutive slices of range(n) on the thread pool (numpy releases the GIL in its loops)."""
    parts = max(1, min(parts, n))
    bounds = np.linspace(0, n, parts + 1).astype(int).tolist()
    list(_pool(parts).map(fn, [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]))


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="coderflow-exp")


def minmax_rows(a: torch.Tensor) -> torch.Tensor:
    import torch

    lo = a.amin(dim=1, keepdim=True)
    span = a.amax(dim=1, keepdim=True) - lo
    return torch.where(span > 0, (a - lo) / span, torch.zeros((), dtype=a.dtype, device=a.device))


@dataclass
class ValArrays:
    """Validation arrays of one search, on the device: zero-shot logits, affinity, support one-hot, labels, KL logits."""

    zs: torch.Tensor
    aff: torch.Tensor
    onehot: torch.Tensor
    y: torch.Tensor
    kl: torch.Tensor | None


CANDIDATES = 16  # contending classes per row in the first pass; rows with more take a second, wider pass
TOLERANCE = 4e-6  # relative to a row's largest |logit|: margins this close to 0 count as contenders (rounding, ~64 ulp)


def accuracy_grid(v: ValArrays, alphas: Sequence[float], betas: Sequence[float], gammas: Sequence[float]) -> np.ndarray:
    """[betas, gammas, alphas] accuracies: per block of rows and beta one exp of the affinity block and one cache
    product, then the whole (gamma, alpha) grid of that beta at once (right_counts)."""
    import torch

    dev, (n, s), c = v.zs.device, v.aff.shape, v.zs.shape[1]
    a = to_device(np.asarray(alphas, dtype=np.float32), dev)
    gs = [float(np.float32(g)) for g in gammas]
    rows = block_rows(4 * 2 * s + 8 * c * 16, dev)
    correct = torch.zeros((len(betas), len(gs), len(a)), dtype=torch.int64, device=dev)
    for i in range(0, n, rows):
        sl = slice(i, i + rows)
        work, y = CacheWork.of(v.aff[sl], v.onehot), v.y[sl, None]  # beta-independent: once per block
        kl = None if v.kl is None else v.kl[sl]
        for ib, b in enumerate(betas):
            cache = cache_product(v.aff[sl], v.onehot, float(b), work)
            correct[ib] += right_counts(v.zs[sl], kl, cache, y, gs, a)
    return to_numpy(correct) / max(1, n)


def right_counts(
    zs: torch.Tensor,
    kl: torch.Tensor | None,
    cache: torch.Tensor,
    y: torch.Tensor,
    gammas: Sequence[float],
    a: torch.Tensor,
) -> torch.Tensor:
    """[gammas, alphas] counts of rows whose argmax over classes of zs + gamma * kl + alpha * cache is the label y:
    the counts the reference's broadcast over (rows, alphas, classes) per gamma gives, bit for bit, without
    broadcasting.

    A class's margin over the label, (zs_c - zs_y) + gamma * (kl_c - kl_y) + alpha * (cache_c - cache_y), is linear
    in (gamma, alpha), so its values at the grid's four corners bound it. A row where some class leads at every
    corner by more than rounding can (TOLERANCE) is wrong everywhere; a row where no class comes within rounding of
    the label at any corner is right everywhere. For the other rows, with at most CANDIDATES contending classes, each
    gamma's alphas split by the margins' zero crossings: alphas where every contender trails by more than rounding
    are right, alphas where some contender leads by more are wrong, and only the few alphas within rounding of a
    crossing are evaluated with the reference's float operations and tie rule (a lower class index wins a tie).
    Rows with more contenders than CANDIDATES take a second pass as wide as the most any of them has.
    """
    import torch

    dev, kl = zs.device, kl if kl is not None and any(g != 0 for g in gammas) else None
    if kl is None and len(gammas) > 1:  # every gamma scores zs + alpha * cache: count once
        return right_counts(zs, None, cache, y, [0.0], a).expand(len(gammas), -1).clone()
    a64, order = torch.sort(a.double())
    n_a, grid = len(a64), _Grid(zs, kl, cache, y, gammas, a64.float())
    g_lo, g_hi = (min(gammas), max(gammas)) if kl is not None else (0.0, 0.0)
    a_lo, a_hi = float(a64[0]), float(a64[-1])
    zy, cy = zs.gather(1, y), cache.gather(1, y)
    dz, dc = zs - zy, cache - cy
    dl = None if kl is None else (kl - kl.gather(1, y)).float()
    size = zs.abs().amax(dim=1, keepdim=True) + max(abs(a_lo), abs(a_hi)) * cache.abs().amax(dim=1, keepdim=True)
    if kl is not None:
        size = size + max(abs(g_lo), abs(g_hi)) * kl.abs().amax(dim=1, keepdim=True).float()
    tol = TOLERANCE * size
    most, least = _corner_bounds(dz, dl, dc, (g_lo, g_hi), (a_lo, a_hi))
    most, least = most.scatter_(1, y, -np.inf), least.scatter_(1, y, -np.inf)
    contender = most >= -tol
    count = contender.sum(dim=1)
    open_ = ~(least > tol).any(dim=1)
    out = torch.zeros((len(gammas), n_a + 1), dtype=torch.int64, device=dev)
    few, many = open_ & (count > 0) & (count <= CANDIDATES), open_ & (count > CANDIDATES)
    for rows in (few, many):  # rows with more contenders: a second pass wide enough for all of theirs
        if not bool(rows.any()):
            continue
        r = rows.nonzero().squeeze(1)
        k = int(count[r].max())
        idx, valid = _packed(contender[r], k)
        step = block_rows(8 * 16 * len(gammas) * k, dev)
        for j in range(0, len(r), step):
            rr = slice(j, j + step)
            out += _interval_counts(grid, tol, _Contenders(r[rr], idx[rr], valid[rr]))
    counts = torch.empty((len(gammas), n_a), dtype=torch.int64, device=dev)
    counts[:, order] = out[:, :n_a].cumsum(dim=1)  # back to the grid's own alpha order
    return counts + (open_ & (count == 0)).sum()


def _corner_bounds(
    dz: torch.Tensor,
    dl: torch.Tensor | None,
    dc: torch.Tensor,
    g_ends: tuple[float, float],
    a_ends: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest of the margins dz + gamma * dl + alpha * dc (dl None: no gamma term) over the corners of
    [g_ends] x [a_ends]; fused rounding, for screening only (the callers' tolerance covers it)."""
    import torch

    bases = [dz if dl is None else dz.add(dl, alpha=g) for g in dict.fromkeys(g_ends)]
    corners = [base.add(dc, alpha=al) for base in bases for al in a_ends]
    most, least = torch.maximum(corners[0], corners[1]), torch.minimum(corners[0], corners[1])
    for m in corners[2:]:
        most, least = torch.maximum(most, m, out=most), torch.minimum(least, m, out=least)
    return most, least


def _packed(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, k] column indices of each row's true entries (at most k), padded with column 0, and which are real."""
    import torch

    rows, cols = mask.nonzero(as_tuple=True)
    slot = mask.cumsum(dim=1)[rows, cols] - 1
    idx = torch.zeros((len(mask), k), dtype=torch.int64, device=mask.device)
    valid = torch.zeros((len(mask), k), dtype=torch.bool, device=mask.device)
    idx[rows, slot], valid[rows, slot] = cols, True
    return idx, valid


GAMMA_CHUNK = 8  # gammas screened together by their corners before their alpha intervals are computed


@dataclass(frozen=True)
class _Grid:
    """What right_counts scores: a block's zero-shot logits, KL term (None: unused), cache logits and labels
    [rows, 1], the gammas, and the alphas ascending (float32)."""

    zs: torch.Tensor
    kl: torch.Tensor | None
    cache: torch.Tensor
    y: torch.Tensor
    gammas: Sequence[float]
    a32: torch.Tensor


@dataclass(frozen=True)
class _Contenders:
    """Rows `r` of a block with their contending classes `idx` ([rows, k]; `valid` where a real contender)."""

    r: torch.Tensor
    idx: torch.Tensor
    valid: torch.Tensor

    def __getitem__(self, sel: Any) -> _Contenders:
        return _Contenders(self.r[sel], self.idx[sel], self.valid[sel])


def _interval_counts(grid: _Grid, tol: torch.Tensor, cont: _Contenders) -> torch.Tensor:
    """right_counts' contending rows as a [gammas, alphas + 1] difference array over the ascending alphas. Per
    chunk of GAMMA_CHUNK gammas the rows are screened again by the chunk's corners; for the undecided ones, per
    gamma, the alphas where the label surely wins are one +1/-1 step, and the alphas within rounding of a crossing
    are evaluated exactly.

    The margins and crossings are float32: their rounding (a few ulp of the row's largest logit) stays far inside
    TOLERANCE (about 64 ulp), so a crossing is never misplaced by more than the band evaluated exactly."""
    import torch

    dev, n_g, n_a = grid.zs.device, len(grid.gammas), len(grid.a32)
    r, idx, valid, yr = cont.r, cont.idx, cont.valid, grid.y[cont.r]

    def gap(x: torch.Tensor) -> torch.Tensor:  # each contender's value minus the label's
        return x[r].gather(1, idx) - x[r].gather(1, yr)

    dz, dk, dl = gap(grid.zs), gap(grid.cache), None if grid.kl is None else gap(grid.kl).float()
    t, width = tol[r], n_a + 1
    a_ends = (float(grid.a32[0]), float(grid.a32[-1]))
    pos, neg, flat = valid & (dk > 0), valid & (dk < 0), valid & (dk == 0)
    step = torch.where(dk == 0, torch.ones((), dtype=dk.dtype, device=dev), dk)[:, None, :]  # never 0: no NaN
    inf = torch.full((), np.inf, device=dev)
    hi_pen = torch.where(pos, 0.0, inf)[:, None, :]  # +inf where a contender gives no upper bound
    lo_pen = torch.where(neg, 0.0, inf)[:, None, :]
    out = torch.zeros((n_g, width), dtype=torch.int64, device=dev)
    for c0 in range(0, n_g, GAMMA_CHUNK):
        gs = grid.gammas[c0 : c0 + GAMMA_CHUNK]
        most, least = _corner_bounds(dz, dl, dk, (min(gs), max(gs)), a_ends)
        lost_all = ((least > t) & valid).any(dim=1)
        won_all = ~((most >= -t) & valid).any(dim=1) & ~lost_all
        out[c0 : c0 + len(gs), 0] += won_all.sum()
        out[c0 : c0 + len(gs), n_a] -= won_all.sum()
        u = (~lost_all & ~won_all).nonzero().squeeze(1)
        if len(u):
            g = torch.tensor(gs, dtype=torch.float32, device=dev)[None, :, None]
            nd = -dz[u][:, None, :] if dl is None else -dz[u][:, None, :] - g * dl[u][:, None, :]
            tu, su = t[u][:, :, None], step[u]
            # beyond `safe` a contender trails the label by more than t, beyond `beat` it leads by more
            safe, beat = (nd - tu) / su, (nd + tu) / su
            s_lo, s_hi = (safe - lo_pen[u]).amax(dim=2), (safe + hi_pen[u]).amin(dim=2)
            b_lo, b_hi = (beat - lo_pen[u]).amax(dim=2), (beat + hi_pen[u]).amin(dim=2)
            bounds = _alpha_ranges(grid.a32, s_lo, s_hi, b_lo, b_hi, flat[u], nd, tu)
            out[c0 : c0 + len(gs)] += _range_counts(grid, cont[u], c0, bounds)
    return out


def _alpha_ranges(
    a32: torch.Tensor,
    s_lo: torch.Tensor,
    s_hi: torch.Tensor,
    b_lo: torch.Tensor,
    b_hi: torch.Tensor,
    flat: torch.Tensor,
    nd: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices j0 <= i0 <= i1 <= j1 into the ascending alphas, per (row, gamma): [i0, i1) surely right, [j0, i0) and
    [i1, j1) to evaluate exactly, the rest surely wrong. A contender with the label's very cache (flat) and within t
    of its zero-shot score leaves no alpha surely right; one ahead by more than t, none right at all."""
    import torch

    j0 = torch.searchsorted(a32, b_lo.contiguous())  # alphas below j0 are lost, as are those from j1 on
    j1 = torch.maximum(torch.searchsorted(a32, b_hi.contiguous(), right=True), j0)
    level = bool(flat.any())  # rare (two classes with the very same cache, e.g. beta 0): checked only then
    if level:
        lost = (flat[:, None, :] & (nd < -t)).any(dim=2)
        j0, j1 = torch.where(lost, 0, j0), torch.where(lost, 0, j1)
    i0 = torch.searchsorted(a32, s_lo.contiguous(), right=True).clamp(min=j0).minimum(j1)
    i1 = torch.searchsorted(a32, s_hi.contiguous()).clamp(max=j1).maximum(i0)
    if level:
        never = (flat[:, None, :] & (nd <= t)).any(dim=2)
        i0, i1 = torch.where(never, j0, i0), torch.where(never, j0, i1)
    return j0, i0, i1, j1


def _range_counts(
    grid: _Grid, cont: _Contenders, g_first: int, bounds: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """The difference array of one chunk of gammas: +1/-1 for each surely right range, +1/-1 around each alpha of
    the bands [j0, i0) and [i1, j1) that the exact evaluation finds right."""
    import torch

    j0, i0, i1, j1 = bounds
    dev, n_g, width = grid.zs.device, i0.shape[1], len(grid.a32) + 1
    gi = torch.arange(n_g, device=dev).expand_as(i0)
    out = torch.bincount((gi * width + i0).reshape(-1), minlength=n_g * width)
    out -= torch.bincount((gi * width + i1).reshape(-1), minlength=n_g * width)
    starts = torch.cat([j0.reshape(-1), i1.reshape(-1)])
    lens = torch.cat([(i0 - j0).reshape(-1), (j1 - i1).reshape(-1)])
    total = int(lens.sum())
    if total:
        owner = torch.repeat_interleave(torch.arange(len(lens), device=dev), lens)
        ai = starts[owner] + torch.arange(total, device=dev) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
        owner = owner % i0.numel()
        row, g_idx = owner // n_g, owner % n_g
        right = _exact_right(grid, cont[row], g_first + g_idx, ai)
        keys = (g_idx * width + ai)[right]
        out += torch.bincount(keys, minlength=n_g * width)
        out -= torch.bincount(keys + 1, minlength=n_g * width + 1)[:-1]
    return out.reshape(n_g, width)


def _exact_right(grid: _Grid, cont: _Contenders, g_idx: torch.Tensor, ai: torch.Tensor) -> torch.Tensor:
    """Per (row, gamma, alpha) triple (cont's rows, gamma indices, indices of the ascending alphas): does the label
    win over the row's contenders with the reference's float operations (zs + gamma * kl, then + alpha * cache)
    and tie rule?"""
    import torch

    r, yr = cont.r[:, None], grid.y[cont.r]
    cols = torch.cat([yr, cont.idx], dim=1)  # the label first, then the contenders
    zs, cache, al = grid.zs[r, cols], grid.cache[r, cols], grid.a32[ai][:, None]
    fixed = zs + al * cache  # gamma 0 (or no kl): float32 as the reference
    logits = fixed
    if grid.kl is not None:
        g = torch.tensor(grid.gammas, dtype=torch.float32, device=zs.device)[g_idx][:, None]
        shifted = (zs + g * grid.kl[r, cols]) + al * cache
        logits = torch.where(g == 0, fixed.to(shifted.dtype), shifted)
    label, others = logits[:, :1], logits[:, 1:]
    beaten = torch.where(cont.idx < yr, others >= label, others > label) & cont.valid
    return ~beaten.any(dim=1)
