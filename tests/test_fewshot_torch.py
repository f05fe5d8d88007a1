"""The torch few-shot methods and searches (tasks/fewshot/methods.py) against the numpy reference they replace."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coderflow.tasks.classify import device as cdev
from coderflow.tasks.fewshot import device as fdev
from coderflow.tasks.fewshot import methods as fm
from coderflow.tasks.fewshot import reference_numpy as ref

torch.set_num_threads(1)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ATOL = 1e-4  # logits within 1e-4 in fp32


def _cell(seed: int, n: int = 60, shots: int = 4, classes: int = 6, dim: int = 16) -> dict:
    """Class-structured unit embeddings: each sample is its class centre plus noise, so accuracies are not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y_support = np.repeat(np.arange(classes), shots)
    y_val = rng.integers(0, classes, n)
    support = (centres[y_support] + 1.5 * rng.normal(size=(len(y_support), dim))).astype(np.float32)
    val = (centres[y_val] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32)
    w = (centres + rng.normal(size=centres.shape)).astype(np.float32)
    return {"support": support, "ys": y_support, "val": val, "yv": y_val, "w": w, "c": classes}


@pytest.fixture(params=DEVICES)
def dev(request) -> str:
    return request.param


@pytest.fixture(params=[512 << 20, 3000])  # the default budget, and one that forces blocks of a few rows
def budget(request, monkeypatch) -> int:
    monkeypatch.setattr(cdev, "CPU_BUDGET", request.param)
    return request.param


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_every_logit_function_equals_the_reference(dev, budget):
    d = _cell(0)
    q, k, ys, w, c = d["val"], d["support"], d["ys"], d["w"], d["c"]
    zs = ref.zero_shot_logits(q, w)
    _close(fm.zero_shot_logits(q, w, device=dev), zs)
    _close(fm.zero_shot_logits(q, w, 10.0, device=dev), ref.zero_shot_logits(q, w, 10.0))
    aff, caff = ref.tip_affinity(q, k), ref.coder_affinity(q, k)
    _close(fm.tip_affinity(q, k, device=dev), aff)
    _close(fm.coder_affinity(q, k, device=dev), caff)
    onehot = ref.one_hot(ys, c)
    for beta in (0.0, 1.0, 5.5, 150.0):
        _close(fm.cache_logits(aff, onehot, beta, device=dev), ref.cache_logits(aff, onehot, beta))
        _close(
            fm.cache_logits(caff.astype(np.float64), onehot, beta, device=dev),
            ref.cache_logits(caff.astype(np.float64), onehot, beta),
        )
    _close(fm.class_prototypes(k, ys, c, device=dev), ref.class_prototypes(k, ys, c))
    _close(fm.prototype_logits(q, k, ys, c, device=dev), ref.prototype_logits(q, k, ys, c))
    want = ref.tip_adapter_logits(q, k, ys, w, 1.7, 5.5)
    _close(fm.tip_adapter_logits(q, k, ys, w, 1.7, 5.5, chunk_rows=7, device=dev), want)
    want = ref.coder_adapter_logits(q, k, ys, zs, 0.8, 3.0)
    _close(fm.coder_adapter_logits(q, k, ys, zs, 0.8, 3.0, chunk_rows=7, device=dev), want)
    dq, ds = ref.class_distribution(q, w), ref.class_distribution(k, w)
    _close(fm.class_distribution(q, w, device=dev), dq)
    _close(fm.class_distribution(q, w, 0.1, device=dev), ref.class_distribution(q, w, 0.1))
    _close(fm.kl_matrix(dq, ds, device=dev), ref.kl_matrix(dq, ds))
    kl = ref.tip_x_kl_logits(dq, ds, aff, onehot)
    _close(fm.tip_x_kl_logits(dq, ds, aff, onehot, device=dev), kl)
    _close(
        fm.tip_x_logits(zs, aff, kl, ys, 1.3, 4.0, 2.5, device=dev), ref.tip_x_logits(zs, aff, kl, ys, 1.3, 4.0, 2.5)
    )
    zs64, kl64 = zs.astype(np.float64), kl.astype(np.float64)  # float64 stays float64 where numpy keeps it
    _close(
        fm.tip_x_logits(zs64, aff, kl64, ys, 1.3, 4.0, 2.5, device=dev),
        ref.tip_x_logits(zs64, aff, kl64, ys, 1.3, 4.0, 2.5),
    )
    assert fm.accuracy(zs, d["yv"]) == ref.accuracy(zs, d["yv"])


def test_empty_queries_give_empty_logits(dev):
    d = _cell(1)
    empty = d["val"][:0]
    assert fm.tip_adapter_logits(empty, d["support"], d["ys"], d["w"], 1.0, 1.0, device=dev).shape == (0, d["c"])
    assert fm.tip_affinity(empty, d["support"], device=dev).shape == (0, len(d["support"]))


def _search_inputs(seed: int) -> tuple:
    d = _cell(seed, n=80)
    zs = ref.zero_shot_logits(d["val"], d["w"]) / 10  # a weaker zero-shot so that the cache changes predictions
    aff = ref.tip_affinity(d["val"], d["support"])
    dist = ref.class_distribution(d["val"], d["w"]), ref.class_distribution(d["support"], d["w"])
    kl = ref.tip_x_kl_logits(*dist, aff, ref.one_hot(d["ys"], d["c"]))
    return d, zs, aff, kl


@pytest.mark.parametrize("seed", [2, 3])
def test_grid_accuracies_equal_the_reference_exactly(dev, budget, seed):
    d, zs, aff, kl = _search_inputs(seed)
    alphas, betas, gammas = [0.0, 0.5, 2.0, 7.0], [0.0, 1.0, 6.0], [0.0, 0.3, 3.0]
    for kl_in in (None, kl, kl.astype(np.float64)):
        g = gammas if kl_in is not None else (0.0,)
        want = ref.grid_accuracies(zs, aff, d["ys"], d["yv"], alphas, betas, kl_in, g)
        got = fm.grid_accuracies(zs, aff, d["ys"], d["yv"], alphas, betas, kl_in, g, device=dev)
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(want)) > 2  # the grid does change predictions


@pytest.mark.parametrize("order", ["beta_first", "alpha_first"])
def test_searches_pick_as_the_reference(dev, budget, order):
    d, zs, aff, kl = _search_inputs(4)
    betas, alphas = fm.tip_grid((7.0, 3.0), (20, 10))
    args = (zs, aff, d["ys"], d["yv"])
    for kwargs in (
        {"alphas": alphas, "betas": betas},
        {"alphas": alphas, "betas": betas, "refine_steps": 5},
        {"alphas": fm.IMO_ALPHAS[::10], "betas": fm.IMO_BETAS[::4], "val_kl": kl, "gammas": fm.IMO_GAMMAS[::10]},
        {"mode": "fixed", "alpha": 2.0, "beta": 3.0},
        {"mode": "fixed", "alpha": 2.0, "beta": 3.0, "val_kl": kl, "gamma": 1.5},
    ):
        want = ref.tune_alpha_beta(*args, order=order, **kwargs)
        assert dataclasses.astuple(fm.tune_alpha_beta(*args, order=order, device=dev, **kwargs)) == dataclasses.astuple(
            want
        )
    assert fm.tune_alpha_beta(None, None, d["ys"], None, mode="fixed", device=dev).val_accuracy is None


def test_coder_adapter_search_picks_as_the_reference(dev, budget):
    d = _cell(5, n=80)
    zs = ref.zero_shot_logits(d["val"], d["w"]) / 20
    aff = ref.coder_affinity(d["val"], d["support"])
    for steps, rounds in (((30, 10), 3), ((3, 3), 2)):
        want = ref.coder_adapter_search(zs, aff, d["ys"], d["yv"], steps=steps, rounds=rounds)
        got = fm.coder_adapter_search(zs, aff, d["ys"], d["yv"], steps=steps, rounds=rounds, device=dev)
        assert dataclasses.astuple(got) == dataclasses.astuple(want)


# Two classes, one support sample each: every query has affinity 0 to class 0's key and 1 to class 1's, so class 1
# gains alpha * (1 - e^-beta) - gamma over class 0 (KL logits [0, -1]); all three queries are right iff
# 1.8 < alpha * (1 - e^-beta) - gamma < 2.5, and many grid points tie at accuracy 1.
TIE_AFF = np.array([[0.0, 1.0]] * 3, dtype=np.float32)
TIE_ZS = np.array([[1.5, 0.0], [2.5, 0.0], [1.8, 0.0]], dtype=np.float32)
TIE_KL = np.array([[0.0, -1.0]] * 3, dtype=np.float32)
TIE_ARGS = (TIE_ZS, TIE_AFF, np.array([0, 1]), np.array([1, 0, 1]))
TIE_GRID = {"alphas": [1.0, 2.0, 3.0, 4.0, 6.0], "betas": [0.5, 1.0, 2.0, 4.0]}


def test_ties_follow_the_loop_order(dev):
    picks = {}
    for order in ("beta_first", "alpha_first"):
        for kl, gammas in ((None, (0.0,)), (TIE_KL, (0.0, 0.5, 1.0, 2.0))):
            kw = {"order": order, "val_kl": kl, "gammas": gammas, **TIE_GRID}
            want = ref.tune_alpha_beta(*TIE_ARGS, **kw)
            got = fm.tune_alpha_beta(*TIE_ARGS, device=dev, **kw)
            assert dataclasses.astuple(got) == dataclasses.astuple(want)
            accs = ref.grid_accuracies(*TIE_ARGS, TIE_GRID["alphas"], TIE_GRID["betas"], kl, gammas)
            assert (accs == accs.max()).sum() > 1  # a real tie: several grid points share the best accuracy
            picks[order, kl is None] = (got.alpha, got.beta, got.gamma)
    # alpha * (1 - e^-beta) in (1.8, 2.5): betas first, beta 0.5 already reaches it with alpha 6 (2.36); alphas first,
    # alpha 1 never does and alpha 2 first does with beta 4 (1.96): the same tie, two picks
    assert picks["beta_first", True] == (6.0, 0.5, 0.0)
    assert picks["alpha_first", True] == (2.0, 4.0, 0.0)
    assert picks["beta_first", False] != picks["alpha_first", False]  # with gammas the two orders disagree
    # the CODER-Adapter search on the same tie: rounds keep the first maximum, betas outer
    want = ref.coder_adapter_search(*TIE_ARGS, beta_range=(0.5, 4.5), alpha_range=(1.0, 7.0), steps=(4, 6))
    got = fm.coder_adapter_search(*TIE_ARGS, beta_range=(0.5, 4.5), alpha_range=(1.0, 7.0), steps=(4, 6), device=dev)
    assert dataclasses.astuple(got) == dataclasses.astuple(want)


def test_a_larger_cell_picks_as_the_reference(dev):
    """100 classes' worth of structure on a smaller scale: 10 classes x 16 shots, 600 queries, Tip-Adapter's grid."""
    d = _cell(6, n=600, shots=16, classes=10, dim=32)
    zs = ref.zero_shot_logits(d["val"], d["w"]) / 10
    aff = ref.tip_affinity(d["val"], d["support"])
    betas, alphas = fm.tip_grid()
    want = ref.tune_alpha_beta(zs, aff, d["ys"], d["yv"], alphas=alphas, betas=betas)
    assert dataclasses.astuple(
        fm.tune_alpha_beta(zs, aff, d["ys"], d["yv"], alphas=alphas, betas=betas, device=dev)
    ) == (dataclasses.astuple(want))


def test_errors_match_the_reference():
    with pytest.raises(ValueError, match="rows"):
        fm.grid_accuracies(TIE_ZS[:2], TIE_AFF, [0, 1], [1, 0, 1], [1.0], [1.0])
    with pytest.raises(ValueError, match="zero-shot shape"):
        fm.tune_alpha_beta(*TIE_ARGS, val_kl=TIE_KL[:, :1], gammas=[1.0], **TIE_GRID)
    with pytest.raises(ValueError, match="non-empty"):
        fm.tune_alpha_beta(*TIE_ARGS, alphas=[], betas=[1.0])
    with pytest.raises(ValueError, match="support columns"):
        fm.cache_logits(TIE_AFF, np.eye(3, dtype=np.float32), 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_cache_is_the_references_bit_for_bit(monkeypatch, dtype):
    """On the CPU the cache product, split over two threads, equals numpy's exp @ onehot exactly; where the
    reference's exps go subnormal (CODER's large betas) they are raised to float32's smallest normal instead, so the
    logits zero_shot + alpha * cache stay equal bit for bit."""
    monkeypatch.setattr(fdev, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    d = _cell(4, n=301)
    aff = ref.coder_affinity(d["val"], d["support"]).astype(dtype)
    onehot, zs = ref.one_hot(d["ys"], d["c"]), ref.zero_shot_logits(d["val"], d["w"])
    np.testing.assert_array_equal(fm.cache_logits(aff, onehot, 5.5), ref.cache_logits(aff, onehot, 5.5))
    want, got = ref.cache_logits(aff, onehot, 150.0), fm.cache_logits(aff, onehot, 150.0)
    assert np.abs(got - want).max() <= len(onehot) * np.exp(np.float32(fdev.EXP_FLOOR))
    np.testing.assert_array_equal(zs + np.float32(2.0) * got, zs + np.float32(2.0) * want)
    work = fdev.CacheWork.of(torch.from_numpy(aff), torch.from_numpy(onehot))
    fdev.cache_product(torch.from_numpy(aff), torch.from_numpy(onehot), 150.0, work)
    exps, tiny = work.buffer.numpy(), np.finfo(np.float32).tiny  # float32 subnormals, even after a float64 exp
    assert (np.exp(-150.0 * (1 - aff)) < tiny).any()  # the reference's exps go subnormal here, these do not
    assert exps.min() >= tiny


@pytest.mark.parametrize("layout", ["grouped", "uneven", "shuffled"])
def test_class_sums_are_the_one_hot_product(layout):
    """The CPU cache sums each class's exps in support order: numpy's exp @ onehot bit for bit when each class's
    images are consecutive (equal or uneven shots, classes in any order, a class with none), within 2 ulp when the
    support is shuffled."""
    rng = np.random.default_rng(5)
    counts = {"grouped": [3] * 7, "uneven": [4, 1, 0, 6, 2, 5, 3], "shuffled": [3, 1, 4, 1, 5, 0, 2]}[layout]
    labels = np.repeat(rng.permutation(7), counts)
    labels = rng.permutation(labels) if layout == "shuffled" else labels
    aff = rng.uniform(-0.2, 1.0, size=(40, len(labels))).astype(np.float32)
    onehot = ref.one_hot(labels, 7)
    want, got = ref.cache_logits(aff, onehot, 3.0), fm.cache_logits(aff, onehot, 3.0)
    if layout == "shuffled":
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=0)
    else:
        np.testing.assert_array_equal(got, want)
    assert (
        fdev.CacheWork.of(torch.from_numpy(aff), torch.from_numpy(onehot)).counts.tolist()
        == np.bincount(labels, minlength=7).tolist()
    )


def test_block_rows_follow_the_budget(monkeypatch):
    monkeypatch.setattr(cdev, "CPU_BUDGET", 1 << 20)
    assert fdev.memory_budget("cpu") == 1 << 20
    assert fdev.block_rows(4096, torch.device("cpu")) == 256
    assert fdev.block_rows(4096, torch.device("cpu"), cap=100) == 100
    assert fdev.block_rows(1 << 30, torch.device("cpu")) == 1  # never zero rows


def test_methods_import_no_torch_until_called():
    """The CLI's refusals load the method registries without torch (tests/test_cli.py): torch loads on first use."""
    code = "import sys, coderflow.tasks.fewshot.scorers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("candidates", [16, 2, 0])
@pytest.mark.parametrize("kl_dtype", [None, np.float32, np.float64])
def test_grid_counts_equal_the_full_broadcast(dev, monkeypatch, candidates, kl_dtype):
    """right_counts against the reference's argmax over every class at every (gamma, alpha), on rows built to tie
    exactly, to lead at one end of the grid only, to cross at a grid alpha, with one cache value for every class, and with many contenders (CANDIDATES 0 and
    2 send rows to the full broadcast); alphas out of order; with no KL term, a float32 and a float64 one."""
    monkeypatch.setattr(fdev, "CANDIDATES", candidates)
    rng = np.random.default_rng(11)
    base = rng.normal(size=(300, 12)).astype(np.float32)
    cache = rng.uniform(0, 3, size=(300, 12)).astype(np.float32)
    y = rng.integers(0, 12, 300)
    rows = np.arange(50)
    base[rows, 3], cache[rows, 3] = base[rows, y[:50]], cache[rows, y[:50]]  # class 3 equals the label: ties
    base[50:100] = base[50:100, :1]  # equal zero-shot logits: the cache decides
    cache[100:150] = cache[100:150, :1] + np.float32(1e-7)  # equal cache up to rounding: the zero-shot decides
    cross = np.arange(150, 200)
    other = (y[cross] + 1) % 12  # crossings exactly at alpha 2.5: base gap 2.5 * cache gap
    cache[cross, other] = cache[cross, y[cross]] + np.float32(0.5)
    base[cross, other] = base[cross, y[cross]] - np.float32(1.25)
    cache[250:280] = 4.0  # one cache value for every class (beta 0): the KL term and the zero-shot decide
    alphas = np.concatenate([np.linspace(0, 20, 81), [1.0, 0.0]]).astype(np.float32)[::-1].copy()
    gammas = [0.0, 0.5, 3.0] if kl_dtype else [0.0, 1.0]
    kl = None if kl_dtype is None else rng.normal(size=(300, 12)).astype(kl_dtype)
    if kl is not None:
        level = np.arange(200, 250)
        kl[level, 5] = kl[level, y[level]]  # equal KL terms: every gamma ties as gamma 0 does
    t = torch.device(dev)
    b, ca, yt, a = (fdev.to_device(x, t) for x in (base, cache, y[:, None], alphas))
    got = fdev.right_counts(b, None if kl is None else fdev.to_device(kl, t), ca, yt, gammas, a)
    for ig, g in enumerate(gammas):
        zs = base if kl is None or g == 0 else base + np.float32(g) * kl
        want = ((zs[:, None, :] + alphas[None, :, None] * cache[:, None, :]).argmax(2) == y[:, None]).sum(0)
        np.testing.assert_array_equal(fdev.to_numpy(got[ig]), want, err_msg=f"gamma {g}")
        assert 0 < want.min() < want.max() < 300


def test_the_scale_benchmark_runs_at_its_tiny_size():
    """benchmarks/fewshot_scale.py end to end at the CI size: every method timed, picks equal to the numpy reference,
    and the last line `worst x floor: R`."""
    out = subprocess.run(
        [sys.executable, "benchmarks/fewshot_scale.py", "--tiny", "--check", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout  # fmt: skip
    lines = out.strip().splitlines()
    assert re.fullmatch(r"worst x floor: \d+\.\d\d", lines[-1]), lines[-1]
    assert float(lines[-1].split(": ")[1]) > 0
    for method in ("prototype", "tip_adapter", "coder_adapter", "tip_x"):
        assert any(line.startswith(f"RESULT | fewshot {method} (5 classes, cpu)") for line in lines)
    assert [line for line in lines if line.startswith("check ")] == [
        f"check {m}: picks equal the numpy reference: yes" for m in ("tip_adapter", "coder_adapter", "tip_x")
    ]
