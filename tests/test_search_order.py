"""Which grid point a hyper-parameter search keeps on ties, against small loops written as each reference loops."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from coderflow.tasks.fewshot import methods as fm
from coderflow.tasks.fewshot import scorers

# Two classes, one support sample each; every validation query has affinity 0 to class 0's key and 1 to class 1's,
# so class 1 gains alpha * (1 - e^-beta) - gamma over class 0 (KL logits [0, -1]); all three queries are right iff
# 1.8 < alpha * (1 - e^-beta) - gamma < 2.5: many grid points tie at accuracy 1.
AFF = np.array([[0.0, 1.0]] * 3, dtype=np.float32)
ZS = np.array([[1.5, 0.0], [2.5, 0.0], [1.8, 0.0]], dtype=np.float32)
KL = np.array([[0.0, -1.0]] * 3, dtype=np.float32)
VAL_Y = np.array([1, 0, 1])
SUPPORT_Y = np.array([0, 1])
ALPHAS, BETAS, GAMMAS = [1.0, 2.0, 3.0, 4.0, 6.0], [0.5, 1.0, 2.0, 4.0], [0.0, 0.5, 1.0, 2.0]


def _acc(alpha: float, beta: float, gamma: float = 0.0) -> float:
    logits = fm.tip_x_logits(ZS, AFF, KL, SUPPORT_Y, alpha, beta, gamma)
    return float((logits.argmax(1) == VAL_Y).mean())


def _imo_loop(alphas, betas, gammas):
    """CLIP_fewshot_imo run.py:342-355 (Tip-X): alpha outermost, then beta, then gamma; `acc > best_acc` from 0."""
    best_acc, best = 0, None
    for alpha in alphas:
        for beta in betas:
            for gamma in gammas:
                acc = _acc(alpha, beta, gamma)
                if acc > best_acc:
                    best_acc, best = acc, (alpha, beta, gamma)
    return best_acc, best


def _tip_loop(alphas, betas):
    """Tip-Adapter utils.py:106-126 (loops at 109-110): beta outermost, then alpha; `acc > best_acc` from 0."""
    best_acc, best = 0, None
    for beta in betas:
        for alpha in alphas:
            acc = _acc(alpha, beta)
            if acc > best_acc:
                best_acc, best = acc, (alpha, beta, 0.0)
    return best_acc, best


def test_fixture_has_ties_that_the_loop_order_decides():
    accs = [_acc(a, b, g) for a in ALPHAS for b in BETAS for g in GAMMAS]
    assert accs.count(1.0) > 3
    assert _imo_loop(ALPHAS, BETAS, GAMMAS)[1] != _tip_loop(ALPHAS, BETAS)[1]


def test_tip_x_keeps_imos_first_maximum():
    acc, point = _imo_loop(ALPHAS, BETAS, GAMMAS)
    got = fm.tune_alpha_beta(
        ZS, AFF, SUPPORT_Y, VAL_Y, alphas=ALPHAS, betas=BETAS, val_kl=KL, gammas=GAMMAS, order="alpha_first"
    )
    assert (got.val_accuracy, (got.alpha, got.beta, got.gamma)) == (acc, point)
    beta_first = fm.tune_alpha_beta(ZS, AFF, SUPPORT_Y, VAL_Y, alphas=ALPHAS, betas=BETAS, val_kl=KL, gammas=GAMMAS)
    assert (beta_first.alpha, beta_first.beta, beta_first.gamma) != point  # the order changes the pick here


def test_tip_adapter_keeps_its_own_first_maximum():
    acc, point = _tip_loop(ALPHAS, BETAS)
    got = fm.tune_alpha_beta(ZS, AFF, SUPPORT_Y, VAL_Y, alphas=ALPHAS, betas=BETAS)
    assert (got.val_accuracy, (got.alpha, got.beta, got.gamma)) == (acc, point)


def test_first_maximum_on_a_fixed_grid():
    accs = np.zeros((2, 2, 3))  # [betas, gammas, alphas]
    accs[1, 0, 0] = accs[0, 1, 2] = accs[0, 0, 1] = 0.9
    assert fm.first_maximum(accs, "beta_first") == (0, 0, 1)  # beta 0 first, then gamma 0, then alpha 1
    assert fm.first_maximum(accs, "alpha_first") == (1, 0, 0)  # alpha 0 first: only beta 1 reaches 0.9 there
    with pytest.raises(ValueError, match="order"):
        fm.tune_alpha_beta(ZS, AFF, SUPPORT_Y, VAL_Y, alphas=[1.0], betas=[1.0], order="gamma_first")  # type: ignore[arg-type]


def _cell(imo_grid: bool, recorded: dict) -> scorers.Cell:
    cfg = SimpleNamespace(
        search="grid", alpha=1.0, beta=1.0, gamma=0.0, alphas=None, betas=None, gammas=None,
        tip_search_scale=(7.0, 3.0), tip_search_steps=(200, 20), refine_steps=0,
    )  # fmt: skip
    record = lambda name, scores, logits, chosen, **kw: recorded.update({name: chosen})  # noqa: E731
    onehot = fm.one_hot(SUPPORT_Y, 2)
    return scorers.Cell(cfg, 2, ZS, ZS, onehot, np.zeros((0, 2)), {}, imo_grid, record)  # type: ignore[arg-type]


def test_tip_adapter_on_imos_grid_loops_as_imo():
    """An adapter run searches Tip-Adapter on IMO's grid (run.py:280-292: alpha outer, beta inner)."""
    x = np.array([[0.0, 1.0]] * 3)  # cosine 0 to class 0's key, 1 to class 1's: the affinity AFF
    split = SimpleNamespace(x=x, labels=VAL_Y)
    features = SimpleNamespace(val=split, test=split, support=np.eye(2), support_labels=SUPPORT_Y)
    recorded: dict = {}
    scorers.tip_adapter(_cell(True, recorded), "tip_adapter_imo", features)
    acc, (alpha, beta, _) = _imo_loop(fm.IMO_ALPHAS, fm.IMO_BETAS, [0.0])
    chosen = recorded["tip_adapter_imo"]
    assert (chosen.val_accuracy, chosen.alpha, chosen.beta) == (acc, pytest.approx(alpha), pytest.approx(beta))
    assert (chosen.alpha, chosen.beta) != pytest.approx(_tip_loop(fm.IMO_ALPHAS, fm.IMO_BETAS)[1][:2])


def _coder_loop(zs, aff, y_support, y_val, steps, rounds):
    """CVPR24-CODER classify_few_shot.py:51-70: each round resets best_acc to 0 and (best_beta, best_alpha) to (0, 0),
    loops beta outer and alpha inner with `acc > best_acc`, and zooms to [0.5, 1.5] x that round's best."""
    onehot = np.eye(int(y_support.max()) + 1)[y_support]
    min_b, max_b, min_a, max_a = 0.1, 200.0, 0.1, 20.0
    per_round = []
    for _ in range(rounds):
        beta_list = [i * (max_b - min_b) / steps[0] + min_b for i in range(steps[0])]
        alpha_list = [i * (max_a - min_a) / steps[1] + min_a for i in range(steps[1])]
        best_acc, best_beta, best_alpha = 0, 0, 0
        for beta in beta_list:
            for alpha in alpha_list:
                acc = float(((zs + alpha * (np.exp(-(beta - beta * aff)) @ onehot)).argmax(1) == y_val).mean())
                if acc > best_acc:
                    best_acc, best_beta, best_alpha = acc, beta, alpha
        per_round.append(best_acc)
        min_b, max_b, min_a, max_a = best_beta * 0.5, best_beta * 1.5, best_alpha * 0.5, best_alpha * 1.5
    return per_round, best_alpha, best_beta


def test_coder_adapter_search_keeps_the_last_rounds_best():
    rng = np.random.default_rng(167)  # a draw where round 2's grid (3 x 3, odd: it misses round 1's best) is worse
    zs = rng.normal(size=(30, 3)).astype(np.float32)
    aff = fm.coder_affinity(rng.normal(size=(30, 6)), rng.normal(size=(6, 6)))
    y_support, y_val = np.array([0, 1, 2] * 2), rng.integers(0, 3, 30)
    per_round, alpha, beta = _coder_loop(zs, aff, y_support, y_val, (3, 3), 2)
    assert per_round[1] < per_round[0]
    got = fm.coder_adapter_search(zs, aff, y_support, y_val, steps=(3, 3), rounds=2)
    assert got.val_accuracy == pytest.approx(per_round[1])
    assert (got.alpha, got.beta) == pytest.approx((alpha, beta), rel=1e-6)


def test_coder_adapter_search_ties_go_to_the_first_beta_then_alpha():
    # every point of a round scores the same: the reference keeps its first (beta, alpha) and zooms around it
    zs, aff = np.array([[1.0, 0.0]] * 4, dtype=np.float32), np.zeros((4, 2), dtype=np.float32)
    y_support, y_val = np.array([0, 1]), np.array([0, 0, 0, 1])
    per_round, alpha, beta = _coder_loop(zs, aff, y_support, y_val, (4, 5), 3)
    got = fm.coder_adapter_search(zs, aff, y_support, y_val, steps=(4, 5), rounds=3)
    assert (got.val_accuracy, got.alpha, got.beta) == (per_round[-1], pytest.approx(alpha), pytest.approx(beta))
    assert got.alpha == pytest.approx(0.1 * 0.5**2) and got.beta == pytest.approx(0.1 * 0.5**2)
