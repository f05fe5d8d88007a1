"""Torch plumbing of the few-shot methods: numpy in and out, row blocks sized from device memory, the search kernel.

The search kernel computes each beta's exp once per block of rows, the alpha axis as one broadcast, and counts
accuracies on the device.

The operations repeat the numpy reference's (tasks/fewshot/reference_numpy.py) step by step and dtype by dtype, so that
results differ only by the rounding of products and exp.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

CPU_BUDGET = 512 << 20  # bytes a block of rows may hold on the CPU; on CUDA a quarter of the free memory


@contextlib.contextmanager
def on_device(device: str) -> Iterator[torch.device]:
    """The torch device, with exact fp32 matmuls (no TF32) and no autograd for the duration."""
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.inference_mode():
            yield torch.device(device)
    finally:
        torch.set_float32_matmul_precision(previous)


def memory_budget(device: str) -> int:
    """Bytes one block of rows may use: a quarter of the free memory on CUDA (at least 64 MiB), CPU_BUDGET otherwise."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return max(64 << 20, torch.cuda.mem_get_info(dev)[0] // 4)
    return CPU_BUDGET


def block_rows(row_bytes: int, dev: torch.device, cap: int | None = None) -> int:
    rows = max(1, memory_budget(str(dev)) // max(1, row_bytes))
    return min(rows, cap) if cap else rows


def to_device(x: Any, dev: torch.device, dtype: Any = None) -> torch.Tensor:
    """numpy -> tensor on dev (shares memory on the CPU: never modify it in place)."""
    import torch

    a = np.require(np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype), requirements=["C", "W"])
    return torch.from_numpy(a).to(dev)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


def map_rows(fn: Callable[[slice], torch.Tensor], n: int, rows: int) -> np.ndarray:
    """fn over consecutive blocks of rows, results gathered on the host."""
    return np.concatenate([to_numpy(fn(slice(i, i + rows))) for i in range(0, max(n, 1), rows)])


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


def cache_product(
    aff: torch.Tensor, onehot: torch.Tensor, beta: float, work: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """exp(-beta * (1 - A)) as float32, @ onehot (the reference's cache_logits, same roundings). `work`: 1 - A and a
    float32 buffer of its shape, when the caller holds them (a search reuses them for every beta instead of
    allocating, and page-faulting, a fresh [rows, S] tensor each time). On the CPU the exp is numpy's ufunc in place
    on the tensor's memory: the reference's own exp, bit for bit (torch's CPU exp differs from it in the last bit for
    about 40% of values), and single-threaded SIMD that does not stall on a busy machine."""
    import torch

    e = (1.0 - aff) * -beta if work is None else torch.mul(work[0], -beta, out=work[1])
    if e.device.type == "cpu":
        np.exp(e.numpy(), out=e.numpy())
    else:
        e.exp_()
    return matmul(e.float(), onehot)


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


CANDIDATES = 16  # classes per row compared over the whole alpha axis; rows with more contenders are broadcast in full
TOLERANCE = 4e-6  # relative to a row's largest |logit|: margins this close to 0 count as contenders (rounding, ~64 ulp)


def accuracy_grid(v: ValArrays, alphas: Sequence[float], betas: Sequence[float], gammas: Sequence[float]) -> np.ndarray:
    """[betas, gammas, alphas] accuracies: per block of rows and beta one exp of the affinity block and one cache
    product; per gamma the whole alpha axis at once (right_per_alpha)."""
    import torch

    dev, (n, s), c = v.zs.device, v.aff.shape, v.zs.shape[1]
    a = to_device(np.asarray(alphas, dtype=np.float32), dev)
    ends = (float(a.min()), float(a.max()), float(a.abs().max())) if len(a) else (0.0, 0.0, 0.0)
    gs = [float(np.float32(g)) for g in gammas]
    rows = block_rows(4 * 2 * s + 8 * c * (12 + len(gs)) + 2 * len(a) * (c + 4) * 8, dev)
    correct = torch.zeros((len(betas), len(gs), len(a)), dtype=torch.int64, device=dev)
    for i in range(0, n, rows):
        sl = slice(i, i + rows)
        one_minus, y = 1.0 - v.aff[sl], v.y[sl, None]  # beta-independent: once per block
        work = (one_minus, torch.empty_like(one_minus))
        bases = [v.zs[sl] if v.kl is None or g == 0 else v.zs[sl] + g * v.kl[sl] for g in gs]
        for ib, b in enumerate(betas):
            cache = cache_product(v.aff[sl], v.onehot, float(b), work)
            for ig, base in enumerate(bases):
                correct[ib, ig] += right_per_alpha(base, cache, y, a, ends)
    return to_numpy(correct) / max(1, n)


def _broadcast_right(base: torch.Tensor, cache: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(rows, alphas): argmax over classes of base + alpha * cache == y, computed as the reference does."""
    return (base[:, None, :] + a[None, :, None] * cache[:, None, :]).argmax(dim=2) == y


def right_per_alpha(
    base: torch.Tensor, cache: torch.Tensor, y: torch.Tensor, a: torch.Tensor, ends: tuple[float, float, float]
) -> torch.Tensor:
    """Per alpha, how many rows have argmax(base + alpha * cache) == y: the count the reference's broadcast over
    (rows, alphas, classes) gives, bit for bit, without broadcasting every class.

    A class's margin over the label, (base_c - base_y) + alpha * (cache_c - cache_y), is linear in alpha, so its
    values at the grid's two ends bound it. A row where some class leads at both ends by more than rounding can
    (TOLERANCE) is wrong at every alpha; a row where no class comes within rounding of the label at either end is
    right at every alpha; otherwise only its contenders (at most CANDIDATES) are evaluated at every alpha with the
    reference's float operations and tie rule (a lower class index wins a tie); rows with more contenders are
    broadcast in full.
    """
    import torch

    lo, hi, top = ends
    by, cy = base.gather(1, y), cache.gather(1, y)
    db, dc = base - by, cache - cy
    at_lo, at_hi = db + lo * dc, db + hi * dc
    tol = TOLERANCE * (base.abs().amax(dim=1, keepdim=True) + top * cache.abs().amax(dim=1, keepdim=True))
    most, least = (
        torch.maximum(at_lo, at_hi).scatter_(1, y, -np.inf),
        torch.minimum(at_lo, at_hi).scatter_(1, y, -np.inf),
    )
    contender = most >= -tol
    count = contender.sum(dim=1)
    open_ = ~(least > tol).any(dim=1)
    out = (open_ & (count == 0)).sum().expand(len(a)).clone()
    few, many = open_ & (count > 0) & (count <= CANDIDATES), open_ & (count > CANDIDATES)
    if bool(few.any()):
        r = few.nonzero().squeeze(1)
        k = min(CANDIDATES, base.shape[1] - 1)
        idx = most[r].topk(k, dim=1).indices  # every contender, then the closest others
        valid = contender[r].gather(1, idx)[:, None, :]
        logits = base[r].gather(1, idx)[:, None, :] + a[None, :, None] * cache[r].gather(1, idx)[:, None, :]
        label = by[r][:, None, :] + a[None, :, None] * cy[r][:, None, :]
        beaten = torch.where((idx < y[r])[:, None, :], logits >= label, logits > label) & valid
        out += (~beaten.any(dim=2)).sum(dim=0)
    if bool(many.any()):
        r = many.nonzero().squeeze(1)
        out += _broadcast_right(base[r], cache[r], y[r], a).sum(dim=0)
    return out
