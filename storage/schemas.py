"""Arrow schemas of every stored table: the one place column names and types are defined."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

TEXT_TYPES = ("name", "template", "att", "ana", "syno", "ovo")

TEXTS = pa.schema(
    [
        ("text_id", pa.string()),
        ("textbank_id", pa.string()),
        ("text_index", pa.int32()),  # row position in the bank = position in CODER vectors
        ("class_index", pa.int32()),
        ("class_name", pa.string()),
        ("text_type", pa.string()),
        ("other_class_index", pa.int32()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("n_tokens", pa.int32()),
        ("truncated", pa.bool_()),
    ]
)

TEXT_EMBEDDINGS = pa.schema(
    [
        ("text_id", pa.string()),
        ("model_id", pa.string()),
        ("embedding", pa.list_(pa.float32())),
    ]
)

IMAGE_EMBEDDINGS = pa.schema(
    [
        ("sample_key", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("shard_hash", pa.string()),
        ("label", pa.int32()),
        ("model_id", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)

PREDICTIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("method", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("shots", pa.int32()),
        ("seed", pa.int32()),
        ("sample_key", pa.string()),
        ("label", pa.int32()),
        ("pred", pa.int32()),
        ("top5", pa.list_(pa.int32())),
        ("margin", pa.float32()),
        ("confidence", pa.float32()),  # softmax probability of `pred` (cosine scores scaled by 100): calibration
        ("image_hash", pa.string()),  # sha256[:16] of the sample's image bytes (_images.json): what compare pairs on
    ]
)

FEWSHOT_SUPPORT = pa.schema(  # the support set of each few-shot cell
    [
        ("run_id", pa.string()),
        ("shots", pa.int32()),
        ("seed", pa.int32()),
        ("sample_key", pa.string()),
        ("label", pa.int32()),
        ("sampling", pa.string()),  # fewshot.sampling: reference or per_class (null: before the option, per_class)
        ("source_path", pa.string()),  # the image's path as its source names it (split file, folder; else the key)
    ]
)

METRICS = pa.schema(
    [
        ("run_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("model_id", pa.string()),
        ("method", pa.string()),
        ("shots", pa.int32()),
        ("seed", pa.int32()),
        ("metric", pa.string()),
        ("class_index", pa.int32()),
        ("value", pa.float64()),
    ]
)

# CODER vectors: dense (`vector`, cosines in the text bank's row order) or top-k sparse (`indices` + `values`).
CODER = pa.schema(
    [
        ("sample_key", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("shard_hash", pa.string()),
        ("label", pa.int32()),
        ("model_id", pa.string()),
        ("textbank_id", pa.string()),
        ("format", pa.string()),  # 'dense', or 'top<k>' for the sparse format
        ("vector", pa.list_(pa.float32())),
        ("indices", pa.list_(pa.int32())),
        ("values", pa.list_(pa.float32())),
    ]
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("flow", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("status", pa.string()),
        ("dataset", pa.string()),
        ("model_id", pa.string()),
        ("textbank_id", pa.string()),
        ("config", pa.string()),
        ("versions", pa.string()),
        ("duration_s", pa.float64()),  # finished_at - started_at (null while running)
        ("flow_run_id", pa.string()),  # the Prefect flow run that wrote it (its page in the UI)
    ]
)

# one row per cell of a suite run (suites/<suite_id>/cells/<cell_id>.parquet): which run answered it, or its error
SUITE_CELLS = pa.schema(
    [
        ("suite_id", pa.string()),  # one id per run of a suite file
        ("suite_name", pa.string()),
        ("cell_id", pa.string()),  # content id of the cell's settings: the same cell in every run of the suite
        ("kind", pa.string()),  # 'zeroshot' (a pipeline run) or 'fewshot' (a few-shot run)
        ("dataset", pa.string()),
        ("model", pa.string()),  # as the suite file names it, e.g. 'ViT-B-32/openai'
        ("model_id", pa.string()),
        ("bank", pa.string()),  # as the suite file names it, e.g. 'offline', 'llm:<model>', 'import:<file>'
        ("textbank_id", pa.string()),
        ("axis", pa.string()),  # a study axis value, e.g. 'classes=50' (null: none)
        ("run_id", pa.string()),  # the run that answered the cell (null: it failed before one existed)
        ("status", pa.string()),  # 'completed', 'reused' (an up-to-date run answered) or 'failed'
        ("error", pa.string()),
        ("seconds", pa.float64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

# paired statistics of each suite cell's methods against clip (suites/<suite_id>/stats.parquet, written at the end of
# a suite by tasks/suite/stats.py): what the `leaderboard` view joins to the metrics
SUITE_STATS = pa.schema(
    [
        ("suite_id", pa.string()),
        ("cell_id", pa.string()),
        ("run_id", pa.string()),
        ("method", pa.string()),
        ("shots", pa.int32()),  # null: zero-shot
        ("n_seeds", pa.int32()),  # seeds, each paired with clip of the same shots and seed (else zero-shot clip)
        ("n_samples", pa.int32()),  # test images paired
        ("delta_vs_clip", pa.float64()),  # top-1 minus clip's top-1, averaged over seeds
        ("ci_low", pa.float64()),  # paired bootstrap 95% interval of the difference (images resampled)
        ("ci_high", pa.float64()),
        ("p_value", pa.float64()),  # exact McNemar over the discordant (image, seed) pairs
        ("only_method", pa.int64()),  # (image, seed) pairs only the method got right
        ("only_clip", pa.int64()),
    ]
)

CLASSES = pa.schema([("dataset", pa.string()), ("class_index", pa.int32()), ("class_name", pa.string())])

# published numbers (storage/reference_results.csv, provenance in reference_results.md): value is a fraction
REFERENCE_RESULTS = pa.schema(
    [
        ("dataset", pa.string()),
        ("backbone", pa.string()),  # open_clip architecture name
        ("pretrained", pa.string()),  # open_clip pretrained tag
        ("method", pa.string()),
        ("shots", pa.int32()),  # null: zero-shot
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("source", pa.string()),
    ]
)

# view name -> schema, for the DuckDB views (an empty typed view stands in until files exist)
VIEWS: dict[str, pa.Schema] = {
    "texts": TEXTS,
    "text_embeddings": TEXT_EMBEDDINGS,
    "image_embeddings": IMAGE_EMBEDDINGS,
    "coder": CODER,
    "predictions": PREDICTIONS,
    "metrics": METRICS,
    "runs": RUNS,
    "fewshot_support": FEWSHOT_SUPPORT,
    "suite_cells": SUITE_CELLS,
    "suite_stats": SUITE_STATS,
}


def list_array(rows: np.ndarray, value_type: pa.DataType, valid: np.ndarray | None = None) -> pa.ListArray:
    """The rows of a matrix as a list<value_type> column without a Python list per row.

    With `valid` (one bool per output row), `rows` holds only the valid rows, in order; the others become nulls.
    """
    width = rows.shape[1]
    if valid is None:
        offsets = pa.array(np.arange(0, (len(rows) + 1) * width, width, dtype=np.int32))
    else:
        valid = np.asarray(valid, dtype=bool)
        offsets = pa.array(
            np.concatenate([[0], np.cumsum(valid * width)]).astype(np.int32), mask=np.append(~valid, False)
        )
    return pa.ListArray.from_arrays(offsets, pa.array(rows.reshape(-1), type=value_type))


def repeated(value: str, n: int) -> pa.StringArray:
    """A constant string column of n rows, without a Python list of n strings."""
    return pa.repeat(pa.scalar(value, pa.string()), n)
