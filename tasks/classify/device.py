"""Torch on the model's device for the scoring methods: the device context, block memory, transfers, and the
zero-shot products in row blocks (the few-shot methods' plumbing, tasks/fewshot/device.py, builds on these).

The zero-shot functions here always run torch, on any device (tests run them on torch's CPU); the methods (methods.py)
call them only for a device other than "cpu", where numpy stays the reference. Products are full fp32 (no TF32),
inside inference mode; the inputs are copied to the device once per call, the image rows block by block, and the
results come back as numpy float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


def to_device(x: Any, dev: torch.device, dtype: Any = None) -> torch.Tensor:
    """numpy -> tensor on dev (shares memory on the CPU: never modify it in place)."""
    import torch

    a = np.require(np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype), requirements=["C", "W"])
    return torch.from_numpy(a).to(dev)


def _rows(row_bytes: int, device: str, rows: int | None) -> int:
    """Image rows per block: `rows` when given, else as many as a block's memory budget holds (memory_budget)."""
    if rows is not None:
        if rows < 1:
            raise ValueError(f"rows={rows}: use a positive number of image rows per block")
        return rows
    return max(1, memory_budget(device) // max(1, row_bytes))


def scores(x: np.ndarray, w_t: np.ndarray, device: str, rows: int | None = None) -> np.ndarray:
    """x @ w_t (N x D @ D x C -> N x C float32) by torch on `device`, in blocks of `rows` image rows."""
    x, w_t = np.asarray(x, dtype=np.float32), np.asarray(w_t, dtype=np.float32)
    if x.ndim != 2 or w_t.ndim != 2 or x.shape[1] != w_t.shape[0]:
        raise ValueError(f"images {x.shape} and classifier {w_t.shape}: pass (N x D) and (D x n_classes)")
    n, c = len(x), w_t.shape[1]
    out = np.empty((n, c), dtype=np.float32)
    with on_device(device) as dev:
        w = to_device(w_t, dev)
        step = _rows(4 * (x.shape[1] + c), device, rows)
        for i in range(0, n, step):
            out[i : i + step] = (to_device(x[i : i + step], dev) @ w).cpu().numpy()
    return out


def coder_products(
    x: np.ndarray, w: np.ndarray, groups: np.ndarray, denom: np.ndarray, device: str, rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CODER's scores and ovo cosines from one product per block: w is [C class sums of att/ana rows | the name and
    syno rows, of classes `groups` | the ovo rows]; a class scores (its sum + its max name/syno cosine, 0 without
    any) / denom (methods.coder_on_device builds w, groups and denom)."""
    n, c, k = len(x), len(denom), len(groups)
    out, ovo_out = np.empty((n, c), dtype=np.float32), np.empty((n, len(w) - c - k), dtype=np.float32)
    with on_device(device) as dev:
        w_t, by_class = to_device(w, dev, np.float32).T, to_device(groups, dev, np.int64)[None, :]
        per_class = to_device(denom, dev, np.float32)
        step = _rows(4 * (x.shape[1] + len(w) + 2 * c), device, rows)
        for i in range(0, n, step):
            p = to_device(x[i : i + step], dev, np.float32) @ w_t
            total = p[:, :c].clone()  # the att/ana sums (0 for a class without att/ana)
            if k:  # add each class's max name/syno cosine; classes without any keep 0
                top = total.new_zeros(total.shape).scatter_reduce_(
                    1, by_class.expand(len(p), k), p[:, c : c + k], reduce="amax", include_self=False
                )
                total += top
            out[i : i + step] = (total / per_class).cpu().numpy()
            ovo_out[i : i + step] = p[:, c + k :].cpu().numpy()
    return out, ovo_out
