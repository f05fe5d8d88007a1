"""Tests of the training-free few-shot methods, support sampling, augmentation and the alpha/beta search."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from PIL import Image

from coderflow.tasks.fewshot import methods as fm
from coderflow.tasks.fewshot.methods import (
    accuracy,
    coder_adapter_logits,
    coder_affinity,
    one_hot,
    prototype_logits,
    tip_adapter_logits,
    tip_affinity,
    tune_alpha_beta,
)
from coderflow.tasks.fewshot.sampling import augment_image, sample_support

torch.set_num_threads(1)


# ---------- sampling ----------


def test_sample_support_is_deterministic_and_reports_short_classes():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 6)
    a = sample_support(labels, shots=4, seed=7)
    b = sample_support(labels, shots=4, seed=7)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.short_classes == {1: 2}
    assert np.bincount(a.labels).tolist() == [4, 2, 4]
    np.testing.assert_array_equal(labels[a.indices], a.labels)
    assert len(set(a.indices.tolist())) == len(a.indices)  # no repeats
    assert np.flatnonzero(labels == 1).tolist() == a.indices[a.labels == 1].tolist()  # short class: all of it
    other = sample_support(labels, shots=4, seed=8)
    assert not np.array_equal(a.indices, other.indices)


def test_sample_support_class_draw_independent_of_other_classes():
    labels = np.array([0] * 20 + [1] * 20)
    more = np.concatenate([labels, [2] * 20])
    a, b = sample_support(labels, 5, seed=3), sample_support(more, 5, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices[:10])


def test_sample_support_absent_class_and_bad_args():
    s = sample_support(np.array([0, 0, 0]), shots=1, seed=0, num_classes=2)
    assert s.short_classes == {1: 0} and len(s.indices) == 1
    with pytest.raises(ValueError, match="shots"):
        sample_support(np.array([0, 1]), shots=0, seed=0)


def _gradient_image() -> Image.Image:
    x = np.linspace(0, 255, 80, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (60, 1)), np.tile(x[:60, None], (1, 80)), np.full((60, 80), 128, np.uint8)], axis=-1)
    return Image.fromarray(rgb)


def test_augment_image_reproducible_per_sample_and_view():
    img = _gradient_image()
    a = augment_image(img, seed=1, sample=5, view=0, size=32)
    assert a.size == (32, 32)
    assert np.array_equal(np.asarray(a), np.asarray(augment_image(img, seed=1, sample=5, view=0, size=32)))
    torch.manual_seed(123)  # torch's global RNG plays no part
    assert np.array_equal(np.asarray(a), np.asarray(augment_image(img, seed=1, sample=5, view=0, size=32)))
    views = {np.asarray(augment_image(img, seed=1, sample=5, view=v, size=32)).tobytes() for v in range(6)}
    assert len(views) > 1
    assert not np.array_equal(np.asarray(a), np.asarray(augment_image(img, seed=2, sample=5, view=0, size=32)))


# ---------- hand-worked cases ----------


def test_prototype_hand_case():
    support = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    labels = np.array([0, 0, 1])
    # class 0 mean of normalised rows = (0.5, 0.5) -> (1, 1)/sqrt(2); class 1 = (-1, 0)
    got = prototype_logits(np.array([[2.0, 0.0]]), support, labels, num_classes=2)
    np.testing.assert_allclose(got, [[1 / math.sqrt(2), -1.0]], rtol=1e-6)


def test_tip_adapter_hand_case():
    x = np.array([[1.0, 0.0]])
    keys = np.array([[3.0, 0.0], [0.0, 1.0]])  # affinities 1 and 0
    w = np.array([[0.0, 1.0], [2.0, 0.0]])  # zero-shot 100 * [0, 1]
    got = tip_adapter_logits(x, keys, np.array([0, 1]), w, alpha=2.0, beta=1.0)
    # cache = [exp(0), exp(-1)]; logits = [0 + 2 * 1, 100 + 2 * e^-1]
    np.testing.assert_allclose(got, [[2.0, 100 + 2 * math.exp(-1)]], rtol=1e-6)


def test_coder_adapter_hand_case():
    q = np.array([[1.0, 0.0]])
    keys = np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 5.0]])  # raw cosines 0.8, 0.6, 0 -> min-max 1, 0.75, 0
    np.testing.assert_allclose(coder_affinity(q, keys), [[1.0, 0.75, 0.0]], atol=1e-6)
    zs = np.array([[0.5, 0.25]])
    got = coder_adapter_logits(q, keys, np.array([0, 1, 1]), zs, alpha=3.0, beta=2.0)
    # cache = [e^0, e^-0.5 + e^-2]
    np.testing.assert_allclose(got, [[0.5 + 3.0, 0.25 + 3 * (math.exp(-0.5) + math.exp(-2))]], rtol=1e-6)


def test_coder_affinity_constant_row_is_zero():
    np.testing.assert_array_equal(coder_affinity(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 2.0]])), [[0, 0]])


# ---------- against naive loops on random data ----------


def _unit(v):
    return v / np.linalg.norm(v)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return {
        "q": rng.normal(size=(7, 5)),
        "k": rng.normal(size=(12, 5)),
        "y": np.array([0, 1, 2] * 4),
        "w": rng.normal(size=(3, 5)),
        "zs": rng.normal(size=(7, 3)),
    }


def test_prototype_matches_loop(data):
    q, k, y = data["q"], data["k"], data["y"]
    expected = np.zeros((len(q), 3))
    for c in range(3):
        proto = _unit(np.mean([_unit(k[s]) for s in range(len(k)) if y[s] == c], axis=0))
        for i in range(len(q)):
            expected[i, c] = _unit(q[i]) @ proto
    np.testing.assert_allclose(prototype_logits(q, k, y, 3), expected, atol=1e-5)


def test_tip_adapter_matches_loop(data):
    q, k, y, w = data["q"], data["k"], data["y"], data["w"]
    alpha, beta = 1.7, 5.5
    expected = np.zeros((len(q), 3))
    for i in range(len(q)):
        for c in range(3):
            cache = sum(math.exp(-beta * (1 - _unit(q[i]) @ _unit(k[s]))) for s in range(len(k)) if y[s] == c)
            expected[i, c] = 100 * _unit(q[i]) @ _unit(w[c]) + alpha * cache
    got = tip_adapter_logits(q, k, y, w, alpha, beta, chunk_rows=3)  # exercises chunking
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_coder_adapter_matches_loop(data):
    q, k, y, zs = data["q"], data["k"], data["y"], data["zs"]
    alpha, beta = 0.8, 3.0
    expected = np.zeros((len(q), 3))
    for i in range(len(q)):
        a = [_unit(q[i]) @ _unit(k[s]) for s in range(len(k))]
        lo, hi = min(a), max(a)
        for c in range(3):
            cache = sum(math.exp(-beta * (1 - (a[s] - lo) / (hi - lo))) for s in range(len(k)) if y[s] == c)
            expected[i, c] = zs[i, c] + alpha * cache
    got = coder_adapter_logits(q, k, y, zs, alpha, beta, chunk_rows=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_grid_search_matches_brute_force_loop(data):
    q, k, y, w = data["q"], data["k"], data["y"], data["w"]
    val_labels = np.array([0, 1, 2, 0, 1, 2, 0])
    alphas, betas = [0.5, 1.0, 5.0, 20.0], [0.5, 2.0, 8.0]
    best = (-1.0, None, None)
    for b in betas:
        for a in alphas:
            acc = accuracy(tip_adapter_logits(q, k, y, w, a, b), val_labels)
            if acc > best[0]:
                best = (acc, a, b)
    got = tune_alpha_beta(100 * tip_affinity(q, w), tip_affinity(q, k), y, val_labels, alphas=alphas, betas=betas)
    assert (got.val_accuracy, got.alpha, got.beta) == pytest.approx(best)
    assert got.evaluated == 12


# ---------- alpha/beta search on a constructed case ----------

# Two classes, one support sample each; every validation query has affinity 0 to class 0's key and 1 to class 1's,
# so its cache scores are [e^-beta, 1] and class 1 gains alpha * (1 - e^-beta) over class 0.
VAL_AFF = np.array([[0.0, 1.0]] * 3)
VAL_ZS = np.array([[1.5, 0.0], [2.5, 0.0], [1.8, 0.0]])
VAL_Y = np.array([1, 0, 1])  # all right iff 1.8 < alpha * (1 - e^-beta) < 2.5
SUPPORT_Y = np.array([0, 1])


def test_grid_search_picks_known_best():
    # alpha * (1 - e^-beta): only (alpha=2, beta=4) -> 1.963 lies in (1.8, 2.5); (4, 0.5) -> 1.574 gets 2 of 3
    got = tune_alpha_beta(VAL_ZS, VAL_AFF, SUPPORT_Y, VAL_Y, alphas=[1, 2, 4], betas=[0.5, 1, 4])
    assert (got.alpha, got.beta, got.val_accuracy, got.mode) == (2.0, 4.0, 1.0, "grid")


def test_grid_refinement_improves_on_coarse_best():
    coarse = tune_alpha_beta(VAL_ZS, VAL_AFF, SUPPORT_Y, VAL_Y, alphas=[1, 3, 5], betas=[4])
    assert (coarse.alpha, coarse.val_accuracy) == (3.0, pytest.approx(2 / 3))
    fine = tune_alpha_beta(VAL_ZS, VAL_AFF, SUPPORT_Y, VAL_Y, alphas=[1, 3, 5], betas=[4], refine_steps=5)
    assert (fine.alpha, fine.beta, fine.val_accuracy, fine.evaluated) == (2.0, 4.0, 1.0, 3 + 5)


def test_fixed_mode():
    got = tune_alpha_beta(VAL_ZS, VAL_AFF, SUPPORT_Y, VAL_Y, mode="fixed", alpha=2.0, beta=4.0)
    assert (got.alpha, got.beta, got.val_accuracy, got.mode) == (2.0, 4.0, 1.0, "fixed")
    unmeasured = tune_alpha_beta(None, None, SUPPORT_Y, None, mode="fixed", alpha=1.0, beta=1.0)
    assert unmeasured.val_accuracy is None
    with pytest.raises(ValueError, match="mode='grid' needs"):
        tune_alpha_beta(None, None, SUPPORT_Y, None)


def test_search_signature_has_no_test_inputs():
    params = inspect.signature(tune_alpha_beta).parameters
    assert not [p for p in params if "test" in p]
    assert [p for p in params][:4] == ["val_zero_shot", "val_affinity", "support_labels", "val_labels"]


def test_errors_name_bad_values():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        one_hot(np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="same embedding width"):
        tip_affinity(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="rows"):
        tune_alpha_beta(VAL_ZS[:2], VAL_AFF, SUPPORT_Y, VAL_Y, alphas=[1], betas=[1])


# ---------- reference searches and Tip-X, against small independent implementations ----------


def test_tip_grid_is_tip_adapters_formula():
    """Tip-Adapter utils.py:103-104: [i * (scale - 0.1) / steps + 0.1 for i in range(steps)], endpoint excluded."""
    betas, alphas = fm.tip_grid((7, 3), (200, 20))
    assert len(betas) == 200 and len(alphas) == 20
    assert betas[0] == pytest.approx(0.1) and betas[1] == pytest.approx(0.1 + 6.9 / 200) and max(betas) < 7
    assert alphas[-1] == pytest.approx(0.1 + 19 * 2.9 / 20)
    flowers_betas, _ = fm.tip_grid((50, 50))
    assert max(flowers_betas) > 40  # reaches the large betas of the reference's per-dataset configs


def _reference_search_hp(zs, aff, y_support, y_val, steps=(20, 10), rounds=3):
    """CVPR24-CODER classify_few_shot.py:37-70 as loops: each round's best over a fresh grid, then [0.5, 1.5] x."""
    onehot = np.eye(int(y_support.max()) + 1)[y_support]
    lo_b, hi_b, lo_a, hi_a = 0.1, 200.0, 0.1, 20.0
    for _ in range(rounds):
        best = (0.0, None, None)
        for i in range(steps[0]):
            b = i * (hi_b - lo_b) / steps[0] + lo_b
            for j in range(steps[1]):
                a = j * (hi_a - lo_a) / steps[1] + lo_a
                logits = zs + a * (np.exp(-(b - b * aff)) @ onehot)
                acc = float((logits.argmax(1) == y_val).mean())
                if acc > best[0]:
                    best = (acc, a, b)
        lo_b, hi_b, lo_a, hi_a = 0.5 * best[2], 1.5 * best[2], 0.5 * best[1], 1.5 * best[1]
    return best


def test_coder_adapter_search_matches_the_reference_loop():
    rng = np.random.default_rng(3)
    zs = rng.normal(size=(40, 4)).astype(np.float32)
    aff = coder_affinity(rng.normal(size=(40, 6)), rng.normal(size=(8, 6)))
    y_support, y_val = np.array([0, 1, 2, 3] * 2), rng.integers(0, 4, 40)
    acc, alpha, beta = _reference_search_hp(zs, aff, y_support, y_val)
    got = fm.coder_adapter_search(zs, aff, y_support, y_val, steps=(20, 10), rounds=3)
    assert got.val_accuracy == pytest.approx(acc)
    assert (got.alpha, got.beta) == pytest.approx((alpha, beta), rel=1e-5)
    assert got.evaluated == 3 * 20 * 10


def test_tip_x_matches_loops():
    """CLIP_fewshot_imo utils.py:132-204: softmax(cos / 0.5) distributions, KL(query || support) for every pair,
    global min-max into the affinity's range, logits = zs + gamma * (-KL') @ L + alpha * exp(-beta (1 - A)) @ L."""
    rng = np.random.default_rng(5)
    q, k, w = rng.normal(size=(7, 5)), rng.normal(size=(6, 5)), rng.normal(size=(3, 5))
    y = np.array([0, 1, 2, 0, 1, 2])
    alpha, beta, gamma = 1.3, 4.0, 2.5

    def dist(x):
        z = np.array([[2 * _unit(r) @ _unit(c) for c in w] for r in x])
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, s = dist(q), dist(k)
    kl = np.array([[sum(p[i, c] * math.log(p[i, c] / s[j, c]) for c in range(3)) for j in range(6)] for i in range(7)])
    aff = np.array([[_unit(q[i]) @ _unit(k[j]) for j in range(6)] for i in range(7)])
    scaled = (kl - kl.min()) / (kl.max() - kl.min()) * (aff.max() - aff.min()) + aff.min()
    zs = np.array([[100 * _unit(q[i]) @ _unit(w[c]) for c in range(3)] for i in range(7)])
    expected = np.zeros((7, 3))
    for i in range(7):
        for c in range(3):
            members = [j for j in range(6) if y[j] == c]
            expected[i, c] = (
                zs[i, c]
                - gamma * sum(scaled[i, j] for j in members)
                + alpha * sum(math.exp(-beta * (1 - aff[i, j])) for j in members)
            )
    dq, ds = fm.class_distribution(q, w), fm.class_distribution(k, w)
    np.testing.assert_allclose(dq, p, atol=1e-5)
    np.testing.assert_allclose(fm.kl_matrix(dq, ds), kl, atol=1e-4)
    a = tip_affinity(q, k)
    kl_logits = fm.tip_x_kl_logits(dq, ds, a, one_hot(y, 3))
    got = fm.tip_x_logits(fm.zero_shot_logits(q, w), a, kl_logits, y, alpha, beta, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert (fm.kl_matrix(dq, ds)[-1] != 0).any()  # every row computed (the reference zeroes the last N mod 100)


def test_tip_x_search_matches_brute_force():
    rng = np.random.default_rng(9)
    zs, aff = rng.normal(size=(30, 3)).astype(np.float32), rng.uniform(size=(30, 6)).astype(np.float32)
    kl = rng.normal(size=(30, 3)).astype(np.float32)
    y, y_val = np.array([0, 1, 2] * 2), rng.integers(0, 3, 30)
    alphas, betas, gammas = [0.0, 1.0, 3.0], [0.0, 2.0], [0.0, 0.5, 4.0]
    best = (-1.0, None)
    for a in alphas:  # IMO run.py:343-345: alpha, then beta, then gamma
        for b in betas:
            for g in gammas:
                acc = accuracy(fm.tip_x_logits(zs, aff, kl, y, a, b, g), y_val)
                if acc > best[0]:
                    best = (acc, (a, b, g))
    got = tune_alpha_beta(zs, aff, y, y_val, alphas=alphas, betas=betas, val_kl=kl, gammas=gammas, order="alpha_first")
    assert (got.val_accuracy, (got.alpha, got.beta, got.gamma)) == (pytest.approx(best[0]), best[1])
    assert got.evaluated == 18
    assert len(fm.IMO_ALPHAS) == 200 and fm.IMO_BETAS[-1] == 20 and fm.IMO_GAMMAS[-1] == 30  # run.py:42-47
