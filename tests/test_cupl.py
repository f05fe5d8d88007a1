"""`cupl` scores as CuPL's classify_imagenet.py: its sentences only, or with the templates, never a CODER bank's rows."""

from __future__ import annotations

import numpy as np
import pytest

from coderflow.config import ClassifyConfig
from coderflow.storage.arrays import TextSet
from coderflow.tasks.classify import methods as m
from coderflow.tasks.classify.zeroshot import run_methods

RNG = np.random.default_rng(11)
CLASSES = ["cat", "dog", "fox"]
# A bank as `coderflow texts import --format cupl` writes one, plus a CODER bank's rows: templates, name prompts,
# CODER att/ana/syno/ovo texts, and CuPL sentences (source import:cupl:...); fox has no CuPL sentence.
ROWS = [
    *[(c, "template", "template") for c in range(3) for _ in range(2)],
    *[(c, "name", "name-template") for c in range(3)],
    *[(c, kind, "llm") for c in range(3) for kind in ("att", "att", "ana", "syno", "ovo")],
    *[(c, "att", "import:cupl:cupl_pets.json:0123456789ab") for c in (0, 0, 0, 1, 1)],
]
CI = np.array([r[0] for r in ROWS])
TT = np.array([r[1] for r in ROWS], dtype=object)
SOURCE = np.array([r[2] for r in ROWS], dtype=object)
T = RNG.normal(size=(len(ROWS), 8)).astype(np.float32)  # unnormalised on purpose: CuPL normalises each text
X = RNG.normal(size=(6, 8)).astype(np.float32)


def _cupl_reference(use_both: bool) -> np.ndarray:
    """sarahpratt/CuPL classify_imagenet.py zeroshot_classifier_gpt: per class, the templates (use_both) and then the
    CuPL sentences, each embedding normalised, their mean normalised; logits = images @ weights."""
    weights = []
    for c in range(len(CLASSES)):
        sentences = [T[i] for i in range(len(ROWS)) if CI[i] == c and SOURCE[i].startswith("import:cupl:")]
        templates = [T[i] for i in range(len(ROWS)) if CI[i] == c and TT[i] == "template"]
        texts = (templates if use_both or not sentences else []) + sentences
        e = np.array([t / np.linalg.norm(t) for t in texts])
        mean = e.mean(axis=0)
        weights.append(mean / np.linalg.norm(mean))
    return X @ np.array(weights).T


@pytest.mark.parametrize("mode", ["sentences", "both"])
def test_cupl_matches_an_independent_implementation(mode: str) -> None:
    sentences = m.cupl_sentence_rows(SOURCE, len(ROWS))
    assert sentences.sum() == 5
    expected = _cupl_reference(use_both=mode == "both")
    got = m.cupl_scores(X, T, CI, TT, 3, sentences, mode)  # type: ignore[arg-type]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    bank = TextSet([str(i) for i in range(len(ROWS))], CI, TT, np.full(len(ROWS), -1), CLASSES, T, SOURCE)
    (result,) = run_methods(["cupl"], X, bank, ClassifyConfig(cupl_mode=mode))
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)


def test_cupl_ignores_every_coder_row() -> None:
    sentences = m.cupl_sentence_rows(SOURCE, len(ROWS))
    before = m.cupl_scores(X, T, CI, TT, 3, sentences)
    moved = T.copy()
    moved[np.isin(TT, ["name", "att", "ana", "syno", "ovo"]) & ~sentences] += 5.0  # change every CODER text
    np.testing.assert_allclose(m.cupl_scores(X, moved, CI, TT, 3, sentences), before, rtol=1e-6)


def test_cupl_without_sentences_is_the_template_classifier() -> None:
    none = m.cupl_sentence_rows(None, len(ROWS))
    assert not none.any()
    got = m.cupl_scores(X, T, CI, TT, 3, none)
    keep = TT == "template"
    weights = m.class_mean_embeddings(m.l2_normalize(T[keep]), CI[keep], 3)
    np.testing.assert_allclose(got, X @ weights.T, rtol=1e-5, atol=1e-6)
    assert ClassifyConfig().cupl_mode == "sentences"
    with pytest.raises(ValueError, match="cupl_mode"):
        m.cupl_scores(X, T, CI, TT, 3, none, "all")  # type: ignore[arg-type]
