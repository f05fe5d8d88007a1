"""Zero-shot methods by name over stored image and text embeddings: one entry point for every method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coderflow.config import ZERO_SHOT_METHODS, ClassifyConfig
from coderflow.storage.arrays import TextSet
from coderflow.tasks.classify import methods as m


@dataclass
class MethodResult:
    """Scores of one method; `logits` says whether they are logits (else cosines). pred/top5 override the order;
    `seed` tells repetitions apart (WaffleCLIP reps)."""

    method: str
    scores: np.ndarray
    logits: bool
    pred: np.ndarray | None = None
    top5: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def check_methods(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in ZERO_SHOT_METHODS]
    if unknown:
        raise ValueError(f"unknown zero-shot method(s) {unknown}: choose from {list(ZERO_SHOT_METHODS)}")


def run_methods(
    methods: Sequence[str], x: np.ndarray, bank: TextSet, params: ClassifyConfig, waffles: Sequence[TextSet] = ()
) -> list[MethodResult]:
    """Every requested method over the same image embeddings; the image-text cosines are computed once. `waffles`:
    one WaffleCLIP bank per rep (seeds waffle_seed, waffle_seed + 1, ...; `seed` is set when there are several)."""
    check_methods(methods)
    n = bank.n_classes
    meta = (bank.class_index, bank.text_type)
    out: list[MethodResult] = []
    cosines = x @ bank.t.T if {"coder", "coder_rerank"} & set(methods) else None
    coder = m.coder_scores(cosines, *meta, n) if cosines is not None else None
    for name in methods:
        if name == "clip":
            out.append(MethodResult(name, m.clip_logits(x, bank.t, *meta, n), logits=True))
        elif name == "dclip":
            out.append(MethodResult(name, m.dclip_scores(x, bank.t, *meta, n), logits=False))
        elif name == "cupl":
            out.append(MethodResult(name, m.cupl_scores(x, bank.t, *meta, n), logits=False))
        elif name == "waffle":
            if not waffles:
                raise ValueError("method 'waffle' needs the waffle text bank: build it with the embed-texts stage")
            for rep, w in enumerate(waffles):
                seed = params.waffle_seed + rep if len(waffles) > 1 else None
                out.append(MethodResult(name, m.waffle_scores(x, w.t, w.class_index, n), logits=False, seed=seed))
        elif name == "coder":
            out.append(MethodResult(name, coder, logits=False))
        else:  # coder_rerank
            r = m.coder_rerank(
                cosines, coder, *meta, bank.other_class_index, n, threshold=params.rerank_threshold, k=params.rerank_k
            )
            top5 = r.top_k[:, :5] if r.top_k.shape[1] >= min(5, n) else None
            info = {
                "n_reranked": r.n_reranked, "n_changed": r.n_changed, "ovo_pairs_consulted": r.n_pairs_consulted,
                "ovo_pairs_covered": r.n_pairs_covered,
            }  # fmt: skip
            out.append(MethodResult(name, coder, logits=False, pred=r.pred, top5=top5, info=info))
    return out
