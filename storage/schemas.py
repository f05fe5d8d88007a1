"""Arrow schemas of every stored table: the one place column names and types are defined."""

from __future__ import annotations

import pyarrow as pa

TEXT_TYPES = ("name", "att", "ana", "syno", "ovo")

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
        ("label", pa.int32()),
        ("model_id", pa.string()),
        ("textbank_id", pa.string()),
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
}
