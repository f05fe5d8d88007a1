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
    methods: Sequence[str],
    x: np.ndarray,
    bank: TextSet,
    params: ClassifyConfig,
    waffles: Sequence[TextSet] = (),
    method_banks: dict[str, TextSet] | None = None,
) -> list[MethodResult]:
    """Every requested method over the same image embeddings; the image-text cosines of a bank are computed once.

    `waffles`: one WaffleCLIP bank per rep (seeds waffle_seed, waffle_seed + 1, ...; `seed` is set when there are
    several). `method_banks`: another bank for some methods (e.g. dclip on an imported DCLIP bank), else `bank`.
    """
    check_methods(methods)
    banks = method_banks or {}
    out: list[MethodResult] = []
    coder_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def coder_of(b: TextSet) -> tuple[np.ndarray, np.ndarray]:
        if id(b) not in coder_cache:
            cosines = x @ b.t.T
            coder_cache[id(b)] = (cosines, m.coder_scores(cosines, b.class_index, b.text_type, b.n_classes))
        return coder_cache[id(b)]

    for name in methods:
        b = banks.get(name, bank)
        n, meta = b.n_classes, (b.class_index, b.text_type)
        if name == "clip":
            out.append(MethodResult(name, m.clip_logits(x, b.t, *meta, n), logits=True))
        elif name == "dclip":
            out.append(MethodResult(name, m.dclip_scores(x, b.t, *meta, n), logits=False))
        elif name == "cupl":
            out.append(MethodResult(name, m.cupl_scores(x, b.t, *meta, n), logits=False))
        elif name == "waffle":
            if not waffles:
                raise ValueError("method 'waffle' needs the waffle text bank: build it with the embed-texts stage")
            for rep, w in enumerate(waffles):
                seed = params.waffle_seed + rep if len(waffles) > 1 else None
                out.append(MethodResult(name, m.waffle_scores(x, w.t, w.class_index, n), logits=False, seed=seed))
        elif name == "coder":
            out.append(MethodResult(name, coder_of(b)[1], logits=False))
        else:  # coder_rerank
            cosines, coder = coder_of(b)
            r = m.coder_rerank(
                cosines, coder, *meta, b.other_class_index, n, threshold=params.rerank_threshold, k=params.rerank_k
            )
            top5 = r.top_k[:, :5] if r.top_k.shape[1] >= min(5, n) else None
            info = {
                "n_reranked": r.n_reranked, "n_changed": r.n_changed, "ovo_pairs_consulted": r.n_pairs_consulted,
                "ovo_pairs_covered": r.n_pairs_covered,
            }  # fmt: skip
            out.append(MethodResult(name, coder, logits=False, pred=r.pred, top5=top5, info=info))
    return out
