"""Zero-shot methods by name over stored image and text embeddings: one entry point for every method."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from coderflow.storage.arrays import TextSet
from coderflow.tasks.classify import methods as m

# method name -> (scores(x, texts) -> (N, C), whether the scores are logits rather than cosines)
Scorer = Callable[[np.ndarray, TextSet], np.ndarray]
METHODS: dict[str, tuple[Scorer, bool]] = {
    "clip": (lambda x, ts: m.clip_logits(x, ts.t, ts.class_index, ts.text_type, ts.n_classes), True),
}


def check_methods(names: list[str] | tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown zero-shot method(s) {unknown}: choose from {sorted(METHODS)}")


def score(method: str, x: np.ndarray, texts: TextSet) -> tuple[np.ndarray, bool]:
    check_methods([method])
    fn, is_logits = METHODS[method]
    return fn(x, texts), is_logits
