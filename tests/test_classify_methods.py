"""Tests of the zero-shot methods: hand-worked toy cases and naive-loop references for CODER and CODER*."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coderflow.tasks.classify.methods import (
    LOGIT_SCALE,
    WAFFLE_WORDS,
    bank_metadata,
    class_mean_embeddings,
    clip_logits,
    coder_rerank,
    coder_scores,
    cupl_scores,
    dclip_scores,
    margin,
    softmax,
    top_k,
    waffle_scores,
    waffle_shape,
    waffle_texts,
)
from coderflow.tasks.texts.bank import Text, build_bank

# Toy bank in 3-D, 2 classes. Images: x0 = e1, x1 = e2, x2 = e3.
X = np.eye(3, dtype=np.float32)
#            row  class  type    other  embedding
BANK = [
    (0, "name", -1, [1.0, 0.0, 0.0]),  # 0
    (0, "name", -1, [0.0, 0.0, 1.0]),  # 1
    (0, "att", -1, [0.6, 0.8, 0.0]),  # 2
    (0, "ana", -1, [0.0, 1.0, 0.0]),  # 3
    (0, "syno", -1, [0.8, 0.0, 0.6]),  # 4
    (0, "ovo", 1, [1.0, 0.0, 0.0]),  # 5  class 0 vs class 1
    (1, "name", -1, [0.0, 1.0, 0.0]),  # 6
    (1, "att", -1, [0.0, 0.6, 0.8]),  # 7
    (1, "att", -1, [0.8, 0.6, 0.0]),  # 8
    (1, "ovo", 0, [0.0, 0.0, 1.0]),  # 9  class 1 vs class 0
]
CI = np.array([r[0] for r in BANK])
TT = np.array([r[1] for r in BANK], dtype=object)
OC = np.array([r[2] for r in BANK])
T = np.array([r[3] for r in BANK], dtype=np.float32)
# Cosines C = X @ T.T: image i's cosines are the i-th coordinates of the text embeddings.
#   row:   0  1  2    3  4    5  6  7    8    9
#   x0:  [ 1, 0, 0.6, 0, 0.8, 1, 0, 0,   0.8, 0]
#   x1:  [ 0, 0, 0.8, 1, 0,   0, 1, 0.6, 0.6, 0]
#   x2:  [ 0, 1, 0,   0, 0.6, 0, 0, 0.8, 0,   1]
C = X @ T.T


def test_clip_by_hand() -> None:
    # class 0 names e1, e3 -> mean (0.5, 0, 0.5) -> unit (1/sqrt2, 0, 1/sqrt2); class 1 name e2.
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(class_mean_embeddings(T[[0, 1, 6]], CI[[0, 1, 6]], 2), [[r, 0, r], [0, 1, 0]], atol=1e-6)
    # logits = 100 * cosines: x0 -> (100/sqrt2, 0), x1 -> (0, 100), x2 -> (100/sqrt2, 0)
    expected = 100 * np.array([[r, 0], [0, 1], [r, 0]])
    np.testing.assert_allclose(clip_logits(X, T, CI, TT, 2), expected, atol=1e-4)


def test_dclip_by_hand() -> None:
    # class 0 att: row 2 -> x0 0.6, x1 0.8, x2 0; class 1 att rows 7, 8 -> x0 (0+0.8)/2, x1 (0.6+0.6)/2, x2 0.8/2
    expected = [[0.6, 0.4], [0.8, 0.6], [0.0, 0.4]]
    np.testing.assert_allclose(dclip_scores(X, T, CI, TT, 2), expected, atol=1e-6)
    # without class 0's att text it falls back to its names (rows 0, 1): x0 0.5, x1 0, x2 0.5
    keep = np.arange(len(T)) != 2
    got = dclip_scores(X, T[keep], CI[keep], TT[keep], 2)
    np.testing.assert_allclose(got[:, 0], [0.5, 0.0, 0.5], atol=1e-6)


def test_cupl_by_hand() -> None:
    # CuPL sentences: row 2 of class 0, rows 7 and 8 of class 1; no name, ana, syno or ovo row counts.
    # class 0: (0.6, 0.8, 0); class 1: sum (0.8, 1.2, 0.8), norm sqrt(2.72)
    sentences = np.isin(np.arange(len(T)), [2, 7, 8])
    n1 = math.sqrt(2.72)
    expected = [[0.6, 0.8 / n1], [0.8, 1.2 / n1], [0.0, 0.8 / n1]]
    np.testing.assert_allclose(cupl_scores(X, T, CI, TT, 2, sentences), expected, atol=1e-6)


def test_coder_by_hand() -> None:
    # class 0 terms: att (row 2), ana (row 3), max(name 0, name 1, syno 4)
    #   x0: (0.6 + 0 + max(1, 0, 0.8)) / 3 = 1.6/3;  x1: (0.8 + 1 + 0) / 3 = 1.8/3;  x2: (0 + 0 + max(0, 1, 0.6)) / 3
    # class 1 terms: att 7, att 8, max(name 6)
    #   x0: (0 + 0.8 + 0) / 3;  x1: (0.6 + 0.6 + 1) / 3;  x2: (0.8 + 0 + 0) / 3
    expected = np.array([[1.6, 0.8], [1.8, 2.2], [1.0, 0.8]]) / 3
    np.testing.assert_allclose(coder_scores(C, CI, TT, 2), expected, atol=1e-6)
    # a class with only name/syno texts scores the max term alone: drop rows 7, 8 -> class 1 = name cosine
    keep = ~np.isin(np.arange(len(T)), [7, 8])
    np.testing.assert_allclose(coder_scores(C[:, keep], CI[keep], TT[keep], 2)[:, 1], [0, 1, 0], atol=1e-6)


def test_coder_rerank_by_hand() -> None:
    s = coder_scores(C, CI, TT, 2)  # [[.533, .267], [.6, .733], [.333, .267]] -> top-1 0, 1, 0
    # margins of softmax(100 s): x0 1 - 5e-12 (1.0 in float32), x1 0.9999967, x2 tanh(6.67/2) = 0.99746
    np.testing.assert_allclose(margin(LOGIT_SCALE * s), [1.0, 0.9999967, 0.9974579], atol=1e-6)
    # threshold 1.5 re-ranks every row. gap(0, 1) = cos(ovo 0 vs 1, row 5) - cos(ovo 1 vs 0, row 9):
    #   x0: 1 - 0 = 1 -> class 0 scores 1, class 1 -1 -> stays 0
    #   x1: 0 - 0 = 0 -> tie, keeps the original order [1, 0]
    #   x2: 0 - 1 = -1 -> class 1 wins: changes 0 -> 1
    result = coder_rerank(C, s, CI, TT, OC, 2, threshold=1.5, k=2)
    np.testing.assert_array_equal(result.pred, [0, 1, 1])
    np.testing.assert_array_equal(result.top_k, [[0, 1], [1, 0], [1, 0]])
    assert (result.n_reranked, result.n_changed) == (3, 1)
    # threshold 0.998 re-ranks x2 only
    result = coder_rerank(C, s, CI, TT, OC, 2, threshold=0.998, k=2)
    np.testing.assert_array_equal(result.reranked, [False, False, True])
    np.testing.assert_array_equal(result.pred, [0, 1, 1])
    assert (result.n_reranked, result.n_changed) == (1, 1)
    # with ovo texts in one direction only (row 9 dropped) the gap counts 0: nothing changes
    keep = np.arange(len(T)) != 9
    result = coder_rerank(C[:, keep], s, CI[keep], TT[keep], OC[keep], 2, threshold=1.5, k=2)
    np.testing.assert_array_equal(result.pred, [0, 1, 0])
    assert (result.n_reranked, result.n_changed) == (3, 0)


def test_helpers_by_hand() -> None:
    # softmax([0, ln 3]) = (1/4, 3/4) -> margin 0.5
    logits = np.array([[0.0, math.log(3.0)], [2.0, 2.0]])
    np.testing.assert_allclose(softmax(logits), [[0.25, 0.75], [0.5, 0.5]], atol=1e-12)
    np.testing.assert_allclose(margin(logits), [0.5, 0.0], atol=1e-7)
    np.testing.assert_array_equal(margin(np.zeros((2, 1))), [1.0, 1.0])
    scores = np.array([[0.1, 0.3, 0.3, 0.2]])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 2, 3]])  # tie 1 vs 2 -> lower index first
    assert top_k(scores, 10).shape == (1, 4)


def test_waffle_texts() -> None:
    """WaffleCLIP waffle_tools.py:458-505: shared descriptors, shapes derived from the class names."""
    names = ["golden retriever", "siamese cat", "tabby"]
    texts = waffle_texts(names, n_pairs=3, seed=7)
    assert len(texts) == 3 and len(texts[0]) == 6
    assert texts == waffle_texts(names, n_pairs=3, seed=7)
    assert texts != waffle_texts(names, n_pairs=3, seed=8)
    prefix = len("A photo of a golden retriever, which has ")
    assert all(t.startswith("A photo of a golden retriever, which ") and t.endswith(".") for t in texts[0])
    # descriptors are shared by every class: only the class name differs
    assert [t.split(", which", 1)[1] for t in texts[0]] == [t.split(", which", 1)[1] for t in texts[2]]
    # 5 words in 3 names -> round(1.67) = 2 words, cut to round(mean of mean word lengths 7, 5.5, 5) = 6 letters;
    # round(2/3 spaces) + 1 = 2 groups, ceil(mean longest word 9, 7, 5 = 7) -> 8 characters: 2 groups of 4
    assert waffle_shape(names) == (2, 6, 2, 4)
    words, chars = texts[0][0][prefix:-1].split(), texts[0][1][prefix:-1].split(", ")
    assert len(words) == 2 and all(any(w[:6] == x for w in WAFFLE_WORDS) and len(x) <= 6 for x in words)
    assert len(chars) == 2 and all(len(c) == 4 and c.isalpha() and c.islower() for c in chars)
    with pytest.raises(ValueError, match="n_pairs=0"):
        waffle_texts(["cat"], n_pairs=0)


def test_waffle_scores_by_hand() -> None:
    # class 0 prompts e1, (0.6, 0.8, 0); class 1 prompt e2 -> x0: (1 + 0.6)/2, 0; x1: 0.8/2, 1
    t = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 1, 0]], dtype=np.float32)
    np.testing.assert_allclose(waffle_scores(X[:2], t, np.array([0, 0, 1]), 2), [[0.8, 0], [0.4, 1]], atol=1e-6)


def test_bank_metadata() -> None:
    bank = build_bank(
        [Text(0, "name", "a cat", "t"), Text(1, "ovo", "a dog, not a cat", "t", other_class_index=0)], ["cat", "dog"]
    )
    ci, tt, oc = bank_metadata(bank)
    assert ci.tolist() == [0, 1] and tt.tolist() == ["name", "ovo"] and oc.tolist() == [-1, 0]


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"classes \[1\] have no"):
        clip_logits(X, T[:6], CI[:6], TT[:6], 2)
    with pytest.raises(ValueError, match=r"outside 0\.\.0"):
        clip_logits(X, T, CI, TT, 1)
    with pytest.raises(ValueError, match="'nope'"):
        coder_scores(C, CI, np.array(["nope"] * len(T)), 2)
    with pytest.raises(ValueError, match="same embedding dim"):
        cupl_scores(X[:, :2], T, CI, TT, 2, np.ones(len(T), dtype=bool))
    with pytest.raises(ValueError, match="k=1"):
        coder_rerank(C, coder_scores(C, CI, TT, 2), CI, TT, OC, 2, k=1)
    assert coder_rerank(C, coder_scores(C, CI, TT, 2), CI, TT, OC, 2, k=5).top_k.shape == (3, 2)  # k capped
    bad_other = OC.copy()
    bad_other[5] = -1
    with pytest.raises(ValueError, match="other_class_index"):
        coder_rerank(C, coder_scores(C, CI, TT, 2), CI, TT, bad_other, 2)


# ---------------------------------------------------------------------------------------------- naive references
def naive_coder(c: np.ndarray, ci: np.ndarray, tt: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(c), n_classes))
    for n in range(len(c)):
        for k in range(n_classes):
            terms = [float(c[n, j]) for j in range(len(ci)) if ci[j] == k and tt[j] in ("att", "ana")]
            group = [float(c[n, j]) for j in range(len(ci)) if ci[j] == k and tt[j] in ("name", "syno")]
            if group:
                terms.append(max(group))
            out[n, k] = sum(terms) / len(terms)
    return out


def naive_rerank(c, s, ci, tt, oc, threshold, k):
    preds, tops, n_reranked = [], [], 0
    for n in range(len(c)):
        z = np.exp(100.0 * (s[n].astype(np.float64) - s[n].max()))
        p = sorted(z / z.sum(), reverse=True)
        cands = sorted(range(s.shape[1]), key=lambda j: (-s[n, j], j))[:k]
        if p[0] - p[1] < threshold:
            n_reranked += 1

            def ovo_mean(a, b, n=n):
                vals = [float(c[n, j]) for j in range(len(ci)) if tt[j] == "ovo" and ci[j] == a and oc[j] == b]
                return sum(vals) / len(vals) if vals else None

            scores = []
            for a in cands:
                total = 0.0
                for b in cands:
                    if b != a and ovo_mean(a, b) is not None and ovo_mean(b, a) is not None:
                        total += ovo_mean(a, b) - ovo_mean(b, a)
                scores.append(total / (k - 1))
            cands = [cands[i] for i in sorted(range(k), key=lambda i: (-scores[i], i))]
        preds.append(cands[0])
        tops.append(cands)
    return np.array(preds), np.array(tops), n_reranked


def random_bank(seed: int, n_classes: int = 6, n_images: int = 40, dim: int = 16):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_classes):
        rows += [(k, "name", -1)] * int(rng.integers(1, 4))
        rows += [(k, "syno", -1)] * int(rng.integers(0, 3))
        if k != 0:  # class 0 has no att/ana texts
            rows += [(k, "att", -1)] * int(rng.integers(0, 4))
            rows += [(k, "ana", -1)] * int(rng.integers(0, 3))
        for other in range(n_classes):  # ovo texts for about half the ordered pairs, so some pairs are one-way
            if other != k and rng.random() < 0.5:
                rows += [(k, "ovo", other)] * int(rng.integers(1, 3))
    ci = np.array([r[0] for r in rows])
    tt = np.array([r[1] for r in rows], dtype=object)
    oc = np.array([r[2] for r in rows])
    x, t = rng.normal(size=(n_images, dim)), rng.normal(size=(len(rows), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return (x @ t.T).astype(np.float32), ci, tt, oc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coder_matches_naive_loop(seed: int) -> None:
    c, ci, tt, _ = random_bank(seed)
    np.testing.assert_allclose(coder_scores(c, ci, tt, 6), naive_coder(c, ci, tt, 6), atol=1e-5)


@pytest.mark.parametrize(("seed", "threshold", "k"), [(0, 0.9, 5), (1, 1.5, 3), (2, 0.5, 6), (3, 1.5, 2)])
def test_coder_rerank_matches_naive_loop(seed: int, threshold: float, k: int) -> None:
    c, ci, tt, oc = random_bank(seed)
    s = coder_scores(c, ci, tt, 6) * 0.2  # shrink score gaps so that many rows fall below the threshold
    got = coder_rerank(c, s, ci, tt, oc, 6, threshold=threshold, k=k)
    pred, tops, n_reranked = naive_rerank(c, s, ci, tt, oc, threshold, k)
    assert got.n_reranked == n_reranked > 0
    np.testing.assert_array_equal(got.pred, pred)
    np.testing.assert_array_equal(got.top_k, tops)
    assert got.n_changed == int((pred != top_k(s, k)[:, 0]).sum()) > 0


@pytest.mark.parametrize(("seed", "k"), [(0, 5), (1, 3)])
def test_coder_rerank_reports_how_many_consulted_pairs_had_ovo_texts(seed: int, k: int) -> None:
    """Coverage: of the candidate pairs {a, b} consulted for re-ranked rows, those with ovo texts both ways."""
    c, ci, tt, oc = random_bank(seed)
    s = coder_scores(c, ci, tt, 6) * 0.2
    got = coder_rerank(c, s, ci, tt, oc, 6, threshold=1.5, k=k)
    both = {(a, b) for a, b in zip(ci[tt == "ovo"], oc[tt == "ovo"], strict=True)}
    consulted = covered = 0
    for row in np.flatnonzero(got.reranked):
        cands = top_k(s, k)[row]
        for i in range(k):
            for j in range(i + 1, k):
                consulted += 1
                covered += (cands[i], cands[j]) in both and (cands[j], cands[i]) in both
    assert (got.n_pairs_consulted, got.n_pairs_covered) == (consulted, covered)
    assert 0 < covered < consulted


def test_top_k_equals_a_stable_full_sort_with_ties():
    """The partition shortcut for many classes returns what a stable argsort does, ties included."""
    from coderflow.tasks.classify.methods import top_k

    rng = np.random.default_rng(0)
    for trial in range(200):
        n, c, k = rng.integers(1, 40), rng.integers(2, 300), rng.integers(1, 8)
        s = rng.integers(0, 5, (n, c)).astype(np.float32) if trial % 2 else rng.random((n, c)).astype(np.float32)
        assert (top_k(s, k) == np.argsort(-s, axis=1, kind="stable")[:, : min(k, c)]).all(), trial
