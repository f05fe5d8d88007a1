"""Torch versions of the zero-shot products for a model on a GPU: class scores and CODER reductions in row blocks.

The functions here always run torch, on any device (tests run them on torch's CPU); the methods (methods.py) call
them only for a device other than "cpu", where numpy stays the reference. Products are full fp32 (no TF32), inside
inference mode; the inputs are copied to the device once per call, the image rows block by block, and the results
come back as numpy float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from coderflow.tasks.classify import methods as m
from coderflow.tasks.fewshot.device import memory_budget, on_device, to_device

if TYPE_CHECKING:
    from collections.abc import Sequence


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


def coder_on_device(
    x: np.ndarray,
    t: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    n_classes: int,
    device: str,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(CODER scores N x n_classes, cosines N x n_ovo to the bank's 'ovo' rows in bank order) by torch on `device`.

    The scores are `coder_scores`'s: class c scores (sum of its att and ana cosines + max over its name and syno
    cosines) / (its number of att and ana texts + 1 if it has name or syno texts). The sum of cosines is one product
    with the sum of the class's att/ana text rows (x.t_1 + ... + x.t_k = x.(t_1 + ... + t_k): equal up to float
    rounding), the max a scatter of the name/syno cosines by class (amax; a class without them adds 0). One product
    per block of `rows` image rows gives the three parts: [att/ana sums | name/syno rows | ovo rows]. The ovo
    cosines are all CODER* (`coder_rerank`) reads; no other cosine comes back to the host.
    """
    x, t = m._embeddings(x, t)
    tt = m._text_type(text_type, len(t))
    ci = m._class_index(class_index, len(t), n_classes)
    aa = (tt == "att") | (tt == "ana")
    ns = np.flatnonzero((tt == "name") | (tt == "syno"))
    ovo = np.flatnonzero(tt == "ovo")
    n_aa = np.bincount(ci[aa], minlength=n_classes).astype(np.float32)
    has_max = np.bincount(ci[ns], minlength=n_classes) > 0
    m._missing(n_aa + has_max, "name, syno, att or ana")
    sums = m._group_sum(t[aa].T, ci[aa], n_classes).T  # n_classes x D: the att/ana rows summed per class
    w = np.concatenate([sums, t[ns], t[ovo]])  # every text the scores and CODER* read, as one product
    n, c, k = len(x), n_classes, len(ns)
    out, ovo_out = np.empty((n, c), dtype=np.float32), np.empty((n, len(ovo)), dtype=np.float32)
    with on_device(device) as dev:
        w_t = to_device(w, dev).T
        groups = to_device(ci[ns], dev)[None, :]
        denom = to_device(n_aa + has_max, dev, np.float32)
        step = _rows(4 * (x.shape[1] + len(w) + 2 * c), device, rows)
        for i in range(0, n, step):
            p = to_device(x[i : i + step], dev) @ w_t
            total = p[:, :c].clone()  # the att/ana sums (0 for a class without att/ana)
            if k:  # add each class's max name/syno cosine; classes without any keep 0
                top = total.new_zeros(total.shape).scatter_reduce_(
                    1, groups.expand(len(p), k), p[:, c : c + k], reduce="amax", include_self=False
                )
                total += top
            out[i : i + step] = (total / denom).cpu().numpy()
            ovo_out[i : i + step] = p[:, c + k :].cpu().numpy()
    return out, ovo_out
