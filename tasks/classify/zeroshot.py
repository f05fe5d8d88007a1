"""Zero-shot methods by name over stored image and text embeddings: one entry point for every method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from coderflow.storage.arrays import TextSet
from coderflow.tasks.classify import methods as m


class ZeroShotParams(Protocol):
    """The settings scorers read (ClassifyConfig in coderflow/sections.py has them): the registry imports no config."""

    waffle_seed: int
    cupl_mode: Literal["sentences", "both"]
    rerank_threshold: float
    rerank_k: int


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


@dataclass
class Inputs:
    """What every scorer reads: image embeddings, the run's bank (or a method's own), the torch device of the
    products (model.device; "cpu" runs numpy), and the CODER scores once."""

    x: np.ndarray
    bank: TextSet
    classify: ZeroShotParams
    waffles: Sequence[TextSet] = ()
    method_banks: dict[str, TextSet] = field(default_factory=dict)
    device: str = "cpu"
    _coder: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def bank_of(self, method: str) -> TextSet:
        return self.method_banks.get(method, self.bank)

    def coder(self, b: TextSet) -> tuple[np.ndarray, np.ndarray]:
        """(cosines to the bank's 'ovo' rows, CODER class scores) of a bank, computed once per bank."""
        if id(b) not in self._coder:
            if self.device == "cpu":
                cosines = self.x @ b.t.T
                scores = m.coder_scores(cosines, b.class_index, b.text_type, b.n_classes)
                self._coder[id(b)] = (cosines[:, b.text_type == "ovo"], scores)
            else:
                scores, ovo = m.coder_on_device(self.x, b.t, b.class_index, b.text_type, b.n_classes, self.device)
                self._coder[id(b)] = (ovo, scores)
        return self._coder[id(b)]


def _clip(name: str, i: Inputs) -> list[MethodResult]:
    b = i.bank_of(name)
    scores = m.clip_logits(i.x, b.t, b.class_index, b.text_type, b.n_classes, device=i.device)
    return [MethodResult(name, scores, logits=True)]


def _dclip(name: str, i: Inputs) -> list[MethodResult]:
    b = i.bank_of(name)
    scores = m.dclip_scores(i.x, b.t, b.class_index, b.text_type, b.n_classes, device=i.device)
    return [MethodResult(name, scores, logits=False)]


def _cupl(name: str, i: Inputs) -> list[MethodResult]:
    b = i.bank_of(name)
    sentences = m.cupl_sentence_rows(b.source, len(b.t))
    scores = m.cupl_scores(
        i.x, b.t, b.class_index, b.text_type, b.n_classes, sentences, i.classify.cupl_mode, device=i.device
    )
    return [MethodResult(name, scores, logits=False)]


def _waffle(name: str, i: Inputs) -> list[MethodResult]:
    if not i.waffles:
        raise ValueError("method 'waffle' needs the waffle text bank: build it with the embed-texts stage")
    out = []
    for rep, w in enumerate(i.waffles):
        seed = i.classify.waffle_seed + rep if len(i.waffles) > 1 else None
        scores = m.waffle_scores(i.x, w.t, w.class_index, i.bank.n_classes, device=i.device)
        out.append(MethodResult(name, scores, logits=False, seed=seed))
    return out


def _coder(name: str, i: Inputs) -> list[MethodResult]:
    return [MethodResult(name, i.coder(i.bank_of(name))[1], logits=False)]


def _coder_rerank(name: str, i: Inputs) -> list[MethodResult]:
    b = i.bank_of(name)
    ovo_cosines, coder = i.coder(b)
    ovo = b.text_type == "ovo"  # CODER* reads only the ovo columns: passing those alone changes none of its results
    r = m.coder_rerank(
        ovo_cosines, coder, b.class_index[ovo], b.text_type[ovo], b.other_class_index[ovo], b.n_classes,
        threshold=i.classify.rerank_threshold, k=i.classify.rerank_k,
    )  # fmt: skip
    top5 = r.top_k[:, :5] if r.top_k.shape[1] >= min(5, b.n_classes) else None
    info = {
        "n_reranked": r.n_reranked, "n_changed": r.n_changed, "ovo_pairs_consulted": r.n_pairs_consulted,
        "ovo_pairs_covered": r.n_pairs_covered,
    }  # fmt: skip
    return [MethodResult(name, coder, logits=False, pred=r.pred, top5=top5, info=info)]


Scorer = Callable[[str, Inputs], list[MethodResult]]
# The zero-shot methods, in the order of the default `methods`: adding one is one entry (its scorer above).
SCORERS: dict[str, Scorer] = {
    "clip": _clip,  # CLIP's prompt ensemble (tasks/classify/methods.py:clip_logits)
    "dclip": _dclip,  # DCLIP: mean over a class's descriptor sentences
    "cupl": _cupl,  # CuPL: mean over its LLM-written sentences (imported), plus the templates with cupl_mode both
    "waffle": _waffle,  # WaffleCLIP: random words and characters, seeded banks of its own
    "coder": _coder,  # CODER zero-shot: mean(att, ana) + max(name, syno)
    "coder_rerank": _coder_rerank,  # CODER*: uncertain images re-ranked by one-vs-one texts
}
OWN_BANKS = frozenset({"waffle"})  # methods that draw their own text banks (no `classify.banks` entry)


def check_methods(names: Sequence[str]) -> None:
    """Refuse names that are not registered zero-shot methods (coderflow.config validates `methods` with this)."""
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ValueError(f"unknown zero-shot method(s) {unknown}: choose from {','.join(SCORERS)}")


def run_methods(
    methods: Sequence[str],
    x: np.ndarray,
    bank: TextSet,
    classify: ZeroShotParams,
    waffles: Sequence[TextSet] = (),
    method_banks: dict[str, TextSet] | None = None,
    device: str = "cpu",
) -> list[MethodResult]:
    """Every requested method over the same image embeddings; the CODER scores of a bank are computed once.

    `waffles`: one WaffleCLIP bank per rep (seeds waffle_seed, waffle_seed + 1, ...; `seed` is set when there are
    several). `method_banks`: another bank for some methods (e.g. dclip on an imported DCLIP bank), else `bank`.
    `device`: the torch device of the products (model.device); "cpu" computes them with numpy.
    """
    check_methods(methods)
    inputs = Inputs(x, bank, classify, waffles, dict(method_banks or {}), device)
    return [result for name in methods for result in SCORERS[name](name, inputs)]
