"""Tests of CODER vector building: cosines per batch, top-k sparse form, Arrow tables and back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coderflow.storage.schemas import CODER
from coderflow.tasks.coder.build import CoderBatch, coder_dense, coder_matrix, coder_table, iter_coder, top_k_sparse

# 3 images and 3 texts in 2-D, all unit rows.
X = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
T = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]], dtype=np.float32)
# C[i, j] = x_i . t_j by hand:
#   x0: [1, 0, 0.6]
#   x1: [0, 1, -0.8]
#   x2: [0.6, 0.8, 0.36 - 0.64 = -0.28]
C = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, -0.8], [0.6, 0.8, -0.28]], dtype=np.float32)
META = {"dataset": "toy", "split": "test", "model_id": "m", "textbank_id": "b"}


def _random(n: int, m: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, t = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return x.astype(np.float32), t.astype(np.float32)


def test_dense_by_hand() -> None:
    np.testing.assert_allclose(coder_matrix(X, T), C, atol=1e-6)
    batches = list(iter_coder(X, T, batch_size=2))
    assert [(b.start, len(b), b.sparse) for b in batches] == [(0, 2, False), (2, 1, False)]
    assert batches[0].vector.dtype == np.float32


def test_top_k_by_hand() -> None:
    # top-2 per row, descending: x0 -> t0 (1), t2 (0.6); x1 -> t1 (1), t0 (0); x2 -> t1 (0.8), t0 (0.6)
    (batch,) = iter_coder(X, T, top_k=2)
    assert batch.sparse and batch.indices.dtype == np.int32 and batch.values.dtype == np.float32
    np.testing.assert_array_equal(batch.indices, [[0, 2], [1, 0], [1, 0]])
    np.testing.assert_allclose(batch.values, [[1.0, 0.6], [1.0, 0.0], [0.8, 0.6]], atol=1e-6)


def test_top_k_ties_go_to_lower_index() -> None:
    row = np.array([[0.25, 0.75, 0.25, 0.75]], dtype=np.float32)
    indices, values = top_k_sparse(row, 2)
    np.testing.assert_array_equal(indices, [[1, 3]])
    np.testing.assert_array_equal(values, [[0.75, 0.75]])
    np.testing.assert_array_equal(top_k_sparse(row, 4)[0], [[1, 3, 0, 2]])


@pytest.mark.parametrize("batch_size", [1, 7, 50, 1000])
def test_batching_matches_one_product(batch_size: int) -> None:
    x, t = _random(50, 13, 8, seed=0)
    full = x @ t.T
    dense = np.concatenate([b.vector for b in iter_coder(x, t, batch_size=batch_size)])
    np.testing.assert_allclose(dense, full, atol=1e-6)
    sparse = list(iter_coder(x, t, batch_size=batch_size, top_k=4))
    indices, values = top_k_sparse(full, 4)
    np.testing.assert_array_equal(np.concatenate([b.indices for b in sparse]), indices)
    np.testing.assert_allclose(np.concatenate([b.values for b in sparse]), values, atol=1e-6)


def test_dense_table_round_trip(tmp_path) -> None:
    (batch,) = iter_coder(X, T)
    table = coder_table(batch, ["a", "b", "c"], [0, 1, 1], **META)
    assert table.schema == CODER
    assert table.column("indices").null_count == 3 and table.column("values").null_count == 3
    assert table.column("sample_key").to_pylist() == ["a", "b", "c"]
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet")
    np.testing.assert_allclose(coder_dense(back), C, atol=1e-6)
    np.testing.assert_allclose(coder_dense(back, n_texts=3), C, atol=1e-6)


def test_sparse_table_round_trip() -> None:
    # top-2 of x0 is t0=1, t2=0.6 -> dense row [1, 0, 0.6]; x1 -> [0, 1, 0] (t0's value is 0); x2 -> [0.6, 0.8, 0]
    (batch,) = iter_coder(X, T, top_k=2)
    table = coder_table(batch, ["a", "b", "c"], np.array([0, 1, 1]), **META)
    assert table.schema == CODER and table.column("vector").null_count == 3
    expected = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(coder_dense(table, n_texts=3), expected, atol=1e-6)
    # with k = all texts the sparse form loses nothing
    (full,) = iter_coder(X, T, top_k=3)
    np.testing.assert_allclose(coder_dense(coder_table(full, list("abc"), [0, 0, 0], **META), n_texts=3), C, atol=1e-6)


def test_batched_tables_concatenate() -> None:
    x, t = _random(10, 6, 4, seed=1)
    keys = [f"k{i}" for i in range(10)]
    tables = [
        coder_table(b, keys[b.start : b.start + len(b)], [0] * len(b), **META) for b in iter_coder(x, t, batch_size=3)
    ]
    table = pa.concat_tables(tables)
    assert table.column("sample_key").to_pylist() == keys
    np.testing.assert_allclose(coder_dense(table), x @ t.T, atol=1e-6)
    sliced = table.slice(4, 3)  # offsets of sliced list arrays are respected
    np.testing.assert_allclose(coder_dense(sliced), (x @ t.T)[4:7], atol=1e-6)


def test_empty_inputs() -> None:
    assert list(iter_coder(np.zeros((0, 2), np.float32), T)) == []
    assert coder_matrix(np.zeros((0, 2), np.float32), T).shape == (0, 3)
    assert coder_dense(CODER.empty_table(), n_texts=3).shape == (0, 3)


def test_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="same model"):
        list(iter_coder(X, np.ones((2, 3), np.float32)))
    with pytest.raises(ValueError, match="top_k=4"):
        list(iter_coder(X, T, top_k=4))
    with pytest.raises(ValueError, match="batch_size=0"):
        list(iter_coder(X, T, batch_size=0))
    (sparse,) = iter_coder(X, T, top_k=2)
    with pytest.raises(ValueError, match="2 sample keys"):
        coder_table(sparse, ["a", "b"], [0, 1], **META)
    table = coder_table(sparse, list("abc"), [0, 0, 0], **META)
    with pytest.raises(ValueError, match="needs n_texts"):
        coder_dense(table)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        coder_dense(table, n_texts=2)
    dense = coder_table(CoderBatch(0, vector=C), list("abc"), [0, 0, 0], **META)
    with pytest.raises(ValueError, match="mixes"):
        coder_dense(pa.concat_tables([dense, table]), n_texts=3)
    with pytest.raises(ValueError, match="n_texts=4"):
        coder_dense(dense, n_texts=4)


def test_device_products_equal_the_numpy_ones() -> None:
    """The torch path (any device but the CPU; run here on torch's CPU) gives numpy's cosines and the same top-k."""
    import torch

    from coderflow.tasks.coder.build import device_blocks

    x, t = _random(37, 23, 16, seed=3)
    blocks = list(device_blocks(x, t, 10, "cpu"))
    assert [s for s, _ in blocks] == [0, 10, 20, 30]
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks]), x @ t.T, atol=1e-6)
    devices = ["cuda"] if torch.cuda.is_available() else []
    for device in devices:  # on a GPU machine the real device path too
        dense = np.concatenate([b.vector for b in iter_coder(x, t, 10, device=device)])
        np.testing.assert_allclose(dense, x @ t.T, atol=1e-5)
        top = next(iter_coder(x, t, 64, top_k=5, device=device))
        assert (top.indices == top_k_sparse(x @ t.T, 5)[0]).mean() > 0.99
