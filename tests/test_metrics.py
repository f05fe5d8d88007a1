"""Metrics against a naive per-sample reference."""

from __future__ import annotations

import numpy as np
import pytest

from coderflow.tasks.evaluate.metrics import classification_metrics


def _naive(labels, topk, n_classes):
    top1 = sum(int(t[0] == y) for y, t in zip(labels, topk, strict=True)) / len(labels)
    top5 = sum(int(y in list(t[:5])) for y, t in zip(labels, topk, strict=True)) / len(labels)
    recalls = {}
    for c in range(n_classes):
        idx = [i for i, y in enumerate(labels) if y == c]
        if idx:
            recalls[c] = sum(int(topk[i][0] == c) for i in idx) / len(idx)
    return top1, top5, sum(recalls.values()) / len(recalls), recalls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_naive(seed):
    rng = np.random.default_rng(seed)
    n_classes = 7
    labels = rng.integers(0, n_classes - 1, 50)  # the last class never occurs
    topk = np.stack([rng.permutation(n_classes)[:5] for _ in range(50)])
    topk[:20, 0] = labels[:20]  # make some hits
    rows = {(m, c): v for m, c, v in classification_metrics(labels, topk, n_classes)}
    top1, top5, mpcr, recalls = _naive(labels, topk, n_classes)
    assert rows[("top1", None)] == pytest.approx(top1)
    assert rows[("top5", None)] == pytest.approx(top5)
    assert rows[("mean_per_class_recall", None)] == pytest.approx(mpcr)
    assert {c: v for (m, c), v in rows.items() if m == "recall"} == pytest.approx(recalls)
    assert ("recall", n_classes - 1) not in rows


def test_hand_worked_case():
    # labels 0,0,1 ; predictions 0,1,1 -> top1 2/3, recall(0)=1/2, recall(1)=1 -> mean 3/4
    rows = {(m, c): v for m, c, v in classification_metrics(np.array([0, 0, 1]), np.array([[0, 1], [1, 0], [1, 0]]), 2)}
    assert rows[("top1", None)] == pytest.approx(2 / 3)
    assert rows[("top5", None)] == 1.0
    assert rows[("mean_per_class_recall", None)] == pytest.approx(0.75)


def test_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        classification_metrics(np.array([0, 5]), np.array([[0], [1]]), 2)
