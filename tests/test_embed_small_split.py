"""A small split is embedded without starting decode worker processes, and gives the embeddings the workers give."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import good_png

from coderflow.config import ModelConfig
from coderflow.tasks.embed import encode
from coderflow.tasks.embed.encode import MIN_CORES_FOR_WORKERS, MIN_IMAGES_FOR_WORKERS, decode_workers, embed_samples
from coderflow.tasks.embed.model import load_configured


def _children() -> set[int]:
    psutil = pytest.importorskip("psutil")
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_the_split_size_decides_whether_workers_start():
    cores = len(os.sched_getaffinity(0))
    encode.close_decode_pool()
    assert decode_workers(None, MIN_IMAGES_FOR_WORKERS - 1) == 0  # threads: the start would not pay
    many = cores if cores > MIN_CORES_FOR_WORKERS else 0  # 2 cores: the workers lose at every size (encode.py)
    assert decode_workers(None, MIN_IMAGES_FOR_WORKERS) == many  # one per core
    assert decode_workers(None, None) == cores  # size unknown: as before
    assert decode_workers(2, 5) == 2 and decode_workers(0, 10**6) == 0  # a configured number is kept


def test_a_small_split_starts_no_process_and_matches_the_workers(tmp_path):
    lm = load_configured(ModelConfig(name="ViT-S-32-alt", pretrained=None, batch_size=8), str(tmp_path))
    samples = [{"__key__": f"k{i}", "png": good_png(i), "cls": i % 3} for i in range(20)]
    meta = {"dataset": "d", "split": "test", "shard": "s0", "shard_hash": "h"}
    encode.close_decode_pool()
    before = _children()
    workers = decode_workers(None, len(samples))
    small = embed_samples(samples, lm, 8, meta, workers=workers)
    assert workers == 0 and _children() == before and not encode.decode_pool_running()  # nothing was started
    try:
        pooled = embed_samples(samples, lm, 8, meta, workers=2)
        assert _children() - before, "the worker processes did not start: the comparison would prove nothing"
    finally:
        encode.close_decode_pool()
    assert small["sample_key"].to_pylist() == pooled["sample_key"].to_pylist()
    assert small["status"].to_pylist() == ["ok"] * 20
    a, b = (np.array(t["embedding"].to_pylist(), np.float32) for t in (small, pooled))
    assert a.shape[0] == 20 and a.shape[1] > 0
    np.testing.assert_allclose(a, b, atol=1e-6)
