"""The zero-shot methods' torch path (tasks/classify/device.py) equals the numpy one: scores, top-5 and CODER*.

The torch path runs for any device but "cpu"; here on torch's CPU as device "cpu:0" (or the device functions called
directly), and on a real GPU when the machine has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from coderflow.storage.arrays import TextSet
from coderflow.tasks.classify import device as d
from coderflow.tasks.classify import methods as m
from coderflow.tasks.classify.zeroshot import run_methods

TORCH_CPU = "cpu:0"  # torch's CPU under another name: the methods take the torch path
METHODS = ["clip", "dclip", "cupl", "waffle", "coder", "coder_rerank"]


@dataclass(frozen=True)
class Params:  # ZeroShotParams; a threshold above 1 re-ranks every row
    waffle_seed: int = 0
    cupl_mode: Literal["sentences", "both"] = "both"
    rerank_threshold: float = 1.5
    rerank_k: int = 3


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    a = rng.normal(size=(n, dim))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def random_bank(seed: int, n_classes: int = 8, dim: int = 16, ovo: bool = True, names: bool = True) -> TextSet:
    """Every text type: class 0 has no att/ana texts, class 1 no name/syno texts, ovo texts for some ordered pairs,
    CuPL sentences (source import:cupl:) for even classes."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, str, int, str]] = []
    for k in range(n_classes):
        rows += [(k, "template", -1, "template")] * int(rng.integers(1, 4))
        if k != 1 and names:
            rows += [(k, "name", -1, "name")] * int(rng.integers(1, 3))
            rows += [(k, "syno", -1, "llm")] * int(rng.integers(0, 3))
        if k != 0 or not names:
            rows += [(k, "att", -1, "llm")] * int(rng.integers(1, 5))
            rows += [(k, "ana", -1, "llm")] * int(rng.integers(0, 3))
        if k % 2 == 0:
            rows += [(k, "att", -1, "import:cupl:prompts.json:0")] * int(rng.integers(1, 3))
        for other in range(n_classes):
            if ovo and other != k and rng.random() < 0.6:
                rows += [(k, "ovo", other, "llm")] * int(rng.integers(1, 3))
    rng.shuffle(rows)  # texts of a class spread over the bank, as after an import
    return TextSet(
        [str(i) for i in range(len(rows))],
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=object),
        np.array([r[2] for r in rows], dtype=np.int64),
        [f"class{k}" for k in range(n_classes)],
        _unit(rng, len(rows), dim),
        np.array([r[3] for r in rows], dtype=object),
    )


def _images(seed: int, n: int = 37, dim: int = 16) -> np.ndarray:
    return _unit(np.random.default_rng(100 + seed), n, dim)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Blocks of a few rows (a tiny memory budget); the block sizes used are recorded."""
    used: list[int] = []
    rows = d._rows

    def spy(row_bytes: int, device: str, r: int | None) -> int:
        used.append(rows(row_bytes, device, r))
        return used[-1]

    monkeypatch.setattr(d, "memory_budget", lambda device: 2048)
    monkeypatch.setattr(d, "_rows", spy)
    return used


def _assert_same(torch_results, numpy_results) -> None:
    assert [(r.method, r.seed) for r in torch_results] == [(r.method, r.seed) for r in numpy_results]
    for a, b in zip(torch_results, numpy_results, strict=True):
        assert a.scores.dtype == np.float32 and a.scores.shape == b.scores.shape, a.method
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5 * (m.LOGIT_SCALE if a.logits else 1), err_msg=a.method)
        np.testing.assert_array_equal(m.top_k(a.scores, 5), m.top_k(b.scores, 5), err_msg=a.method)
        for name in ("pred", "top5"):
            if b.__dict__[name] is None:
                assert a.__dict__[name] is None
            else:
                np.testing.assert_array_equal(a.__dict__[name], b.__dict__[name], err_msg=f"{a.method} {name}")
        assert a.info == b.info, a.method


def _run(x: np.ndarray, bank: TextSet, device: str, params: Params = Params()):
    waffle = TextSet(bank.text_ids, bank.class_index, bank.text_type, bank.other_class_index, bank.class_names,
                     bank.t[::-1].copy())  # fmt: skip
    return run_methods(METHODS, x, bank, params, [bank, waffle], device=device)


def test_scores_equal_numpy_in_blocks(small_blocks: list[int]) -> None:
    rng = np.random.default_rng(0)
    x, w_t = _images(0), rng.normal(size=(16, 9)).astype(np.float32)
    got = d.scores(x, w_t, "cpu")
    assert got.dtype == np.float32 and got.shape == (37, 9)
    np.testing.assert_allclose(got, x @ w_t, atol=1e-6)
    assert 1 <= small_blocks[-1] < len(x)  # several blocks, the last one partial
    np.testing.assert_allclose(d.scores(x, w_t, "cpu", rows=10), x @ w_t, atol=1e-6)
    assert d.scores(x[:0], w_t, "cpu").shape == (0, 9)
    with pytest.raises(ValueError, match="classifier"):
        d.scores(x, w_t.T, "cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coder_on_device_equals_coder_scores(seed: int, small_blocks: list[int]) -> None:
    bank, x = random_bank(seed), _images(seed)
    cos = x @ bank.t.T
    scores, ovo = m.coder_on_device(x, bank.t, bank.class_index, bank.text_type, bank.n_classes, "cpu")
    assert 1 <= small_blocks[-1] < len(x)
    assert scores.dtype == ovo.dtype == np.float32
    np.testing.assert_allclose(scores, m.coder_scores(cos, bank.class_index, bank.text_type, bank.n_classes), atol=1e-5)
    np.testing.assert_allclose(ovo, cos[:, bank.text_type == "ovo"], atol=1e-6)
    assert ovo.shape[1] == (bank.text_type == "ovo").sum() > 0


@pytest.mark.parametrize(("ovo", "names"), [(False, True), (True, False)])
def test_coder_on_device_without_ovo_or_name_texts(ovo: bool, names: bool) -> None:
    bank, x = random_bank(3, ovo=ovo, names=names), _images(3)
    assert ((bank.text_type == "ovo").any(), (bank.text_type == "name").any()) == (ovo, names)
    scores, cos_ovo = m.coder_on_device(x, bank.t, bank.class_index, bank.text_type, bank.n_classes, "cpu", rows=5)
    expected = m.coder_scores(x @ bank.t.T, bank.class_index, bank.text_type, bank.n_classes)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert cos_ovo.shape == (len(x), (bank.text_type == "ovo").sum())


def test_coder_on_device_refuses_classes_without_texts() -> None:
    bank, x = random_bank(4), _images(4)
    keep = ~((bank.class_index == 5) & np.isin(bank.text_type, ["name", "syno", "att", "ana"]))
    args = (bank.class_index[keep], bank.text_type[keep], bank.n_classes)
    with pytest.raises(ValueError, match=r"classes \[5\] have no name, syno, att or ana texts"):
        m.coder_scores(x @ bank.t[keep].T, *args)
    with pytest.raises(ValueError, match=r"classes \[5\] have no name, syno, att or ana texts"):
        m.coder_on_device(x, bank.t[keep], *args, "cpu")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_method_on_torch_equals_numpy(seed: int, small_blocks: list[int]) -> None:
    bank, x = random_bank(seed), _images(seed)
    numpy_results = _run(x, bank, "cpu")
    assert small_blocks == []  # device "cpu" never reaches torch
    torch_results = _run(x, bank, TORCH_CPU)
    assert len(small_blocks) == 6 and max(small_blocks) < len(x)  # clip, dclip, cupl, 2 waffles, coder: in blocks
    _assert_same(torch_results, numpy_results)
    rerank = numpy_results[-1]
    assert rerank.info["n_reranked"] == len(x) and rerank.info["n_changed"] > 0  # CODER* did change predictions


@pytest.mark.parametrize(("seed", "ovo"), [(0, True), (1, True), (2, False)])
def test_coder_rerank_on_the_ovo_columns_equals_it_on_every_column(seed: int, ovo: bool) -> None:
    bank, x = random_bank(seed, ovo=ovo), _images(seed)
    params = Params(rerank_k=5)
    (result,) = run_methods(["coder_rerank"], x, bank, params)
    cos = x @ bank.t.T
    coder = m.coder_scores(cos, bank.class_index, bank.text_type, bank.n_classes)
    full = m.coder_rerank(cos, coder, bank.class_index, bank.text_type, bank.other_class_index, bank.n_classes,
                          threshold=params.rerank_threshold, k=params.rerank_k)  # fmt: skip
    np.testing.assert_array_equal(result.scores, coder)
    np.testing.assert_array_equal(result.pred, full.pred)
    np.testing.assert_array_equal(result.top5, full.top_k[:, :5])
    assert result.info == {
        "n_reranked": full.n_reranked, "n_changed": full.n_changed, "ovo_pairs_consulted": full.n_pairs_consulted,
        "ovo_pairs_covered": full.n_pairs_covered,
    }  # fmt: skip
    assert (full.n_changed > 0) == ovo and (full.n_pairs_covered > 0) == ovo
    (on_torch,) = run_methods(["coder_rerank"], x, bank, params, device=TORCH_CPU)
    _assert_same([on_torch], [result])


def test_cuda_equals_numpy() -> None:
    """On a machine with CUDA, the real device path; skipped elsewhere."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bank, x = random_bank(5, n_classes=40, dim=64), _images(5, n=300, dim=64)
    precision = torch.get_float32_matmul_precision()
    _assert_same(_run(x, bank, "cuda"), _run(x, bank, "cpu"))
    assert torch.get_float32_matmul_precision() == precision  # restored
