"""The canned SQL questions (storage/sql/*.sql) over a synthetic CODER run: each must answer in < 1 s.

A temp work directory gets Parquet files with the schemas of storage/schemas.py at the paths of storage/layout.py:
a text bank of T texts over C classes, their text embeddings, N image embeddings in shards, CODER vectors (top-k
sparse by default, --coder-format dense for N x T floats), and R classify runs (predictions of every method for
every image, metrics with per-class recall, run records). Then storage.db.refresh_views, and every .sql file in
storage/sql is run through storage.db.query (the `coderflow query --canned` path: read-only connection, guards).

    python benchmarks/duckdb_sql.py                                  # 100k images, 1k texts, 100 classes, 1 run
    python benchmarks/duckdb_sql.py --images 1000000 --runs 5 --coder-format dense
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
from _common import Timings, print_header, result_line

from coderflow.storage.db import SQL_DIR, query, refresh_views
from coderflow.storage.layout import Layout, content_id
from coderflow.storage.parquet_io import write_table
from coderflow.storage.schemas import (
    CODER,
    IMAGE_EMBEDDINGS,
    METRICS,
    PREDICTIONS,
    RUNS,
    TEXT_EMBEDDINGS,
    TEXTS,
    list_array,
)
from coderflow.tasks.classify.zeroshot import SCORERS as ZERO_SHOT_METHODS

MODEL = "ViT-S-32-alt__random"
DATASET, SPLIT = "synthetic", "test"


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.standard_normal((n, d), dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def write_synthetic(layout: Layout, args: argparse.Namespace) -> dict[str, int]:
    rng = np.random.default_rng(0)
    n, m, c, d = args.images, args.texts, args.classes, args.dim
    f32, i32 = pa.float32(), pa.int32()
    # text bank + embeddings
    class_index = np.arange(m) % c
    types = np.array(["name", "att", "ana", "syno", "ovo"])[np.arange(m) // c % 5]
    texts = [f"a photo of a class-{ci} thing, variant {i}" for i, ci in enumerate(class_index)]
    ids = [content_id(s) for s in texts]
    bank = content_id(*ids)
    other = np.where(types == "ovo", (class_index + 1) % c, -1)
    write_table(
        pa.table(
            {
                "text_id": ids,
                "textbank_id": [bank] * m,
                "text_index": pa.array(np.arange(m), i32),
                "class_index": pa.array(class_index, i32),
                "class_name": [f"class {ci}" for ci in class_index],
                "text_type": types.tolist(),
                "other_class_index": pa.array(other, i32, mask=other < 0),
                "text": texts,
                "source": ["offline"] * m,
                "n_tokens": pa.array(np.full(m, 12), i32),
                "truncated": [False] * m,
            }
        ),
        layout.textbank_file(bank),
        TEXTS,
    )
    t = unit_rows(rng, m, d)
    write_table(
        pa.table({"text_id": ids, "model_id": [MODEL] * m, "embedding": list_array(t, f32)}),
        layout.text_embedding_part(MODEL, bank),
        TEXT_EMBEDDINGS,
    )
    labels = rng.integers(0, c, n).astype(np.int32)
    keys = np.array([f"img{i:08d}" for i in range(n)])
    coder_bytes = 0
    for s, start in enumerate(range(0, n, args.per_shard)):
        sl = slice(start, min(n, start + args.per_shard))
        k = len(keys[sl])
        shard = f"{DATASET}-{SPLIT}-{s:06d}"
        x = unit_rows(rng, k, d)
        shard_hash = content_id(shard, length=64)
        const = {
            "dataset": [DATASET] * k,
            "split": [SPLIT] * k,
            "model_id": [MODEL] * k,
            "shard_hash": [shard_hash] * k,
        }
        write_table(
            pa.table(
                {
                    "sample_key": keys[sl].tolist(),
                    **const,
                    "shard": [shard] * k,
                    "label": pa.array(labels[sl], i32),
                    "embedding": list_array(x, f32),
                    "status": ["ok"] * k,
                    "error": pa.nulls(k, pa.string()),
                }
            ),
            layout.image_embedding_part(MODEL, DATASET, SPLIT, shard, shard_hash),
            IMAGE_EMBEDDINGS,
        )
        cos = x @ t.T
        if args.coder_format == "dense":
            vec, idx, val = list_array(cos, f32), pa.nulls(k, pa.list_(i32)), pa.nulls(k, pa.list_(f32))
        else:
            top = np.argsort(-cos, axis=1)[:, : args.top_k].astype(np.int32)
            vec = pa.nulls(k, pa.list_(f32))
            idx, val = list_array(top, i32), list_array(np.take_along_axis(cos, top, axis=1), f32)
        out = layout.coder_part(MODEL, bank, DATASET, SPLIT, shard + ".parquet")
        write_table(
            pa.table(
                {
                    "sample_key": keys[sl].tolist(),
                    **const,
                    "label": pa.array(labels[sl], i32),
                    "textbank_id": [bank] * k,
                    "format": ["dense" if args.coder_format == "dense" else f"top{args.top_k}"] * k,
                    "vector": vec,
                    "indices": idx,
                    "values": val,
                }
            ),
            out,
            CODER,
        )
        coder_bytes += out.stat().st_size
    # runs: predictions + metrics + run record per run
    start_time = datetime(2026, 1, 1, tzinfo=UTC)
    n_pred = 0
    for r in range(args.runs):
        run_id = f"run-{r:04d}"
        preds, mets = [], []
        for method in ZERO_SHOT_METHODS:
            correct = rng.random(n) < 0.6
            pred = np.where(correct, labels, rng.integers(0, c, n)).astype(np.int32)
            top5 = np.concatenate([pred[:, None], rng.integers(0, c, (n, 4)).astype(np.int32)], axis=1)
            preds.append(
                pa.table(
                    {
                        "run_id": [run_id] * n,
                        "method": [method] * n,
                        "dataset": [DATASET] * n,
                        "split": [SPLIT] * n,
                        "shots": pa.nulls(n, i32),  # zero-shot rows: shots and seed are NULL
                        "seed": pa.nulls(n, i32),
                        "sample_key": keys.tolist(),
                        "label": pa.array(labels, i32),
                        "pred": pa.array(pred, i32),
                        "top5": list_array(top5, i32),
                        "margin": pa.array(rng.random(n).astype(np.float32), f32),
                        "confidence": pa.array(rng.random(n).astype(np.float32), f32),
                        "image_hash": [f"{i:016x}" for i in range(n)],  # one image per sample key
                    }
                )
            )
            rows = [("top1", None, float((pred == labels).mean())), ("top5", None, 0.8)]
            rows += [("mean_per_class_recall", None, 0.6), ("n_samples", None, float(n))]
            rows += [("recall", ci, float(rng.random())) for ci in range(c)]
            for metric, ci, value in rows:
                mets.append(
                    {
                        "run_id": run_id,
                        "dataset": DATASET,
                        "split": SPLIT,
                        "model_id": MODEL,
                        "method": method,
                        "shots": None,
                        "seed": None,
                        "metric": metric,
                        "class_index": ci,
                        "value": value,
                    }
                )
        predictions = pa.concat_tables(preds)
        n_pred += predictions.num_rows
        write_table(predictions, layout.run_file(run_id, "predictions.parquet"), PREDICTIONS)
        write_table(pa.Table.from_pylist(mets, schema=METRICS), layout.run_file(run_id, "metrics.parquet"), METRICS)
        started = start_time + timedelta(hours=r)
        run = {
            "run_id": run_id,
            "flow": "classify",
            "started_at": started,
            "finished_at": started + timedelta(minutes=5),
            "status": "completed",
            "dataset": DATASET,
            "model_id": MODEL,
            "textbank_id": bank,
            "config": json.dumps({"methods": list(ZERO_SHOT_METHODS)}),
            "versions": json.dumps({"coderflow": "bench"}),
        }
        write_table(pa.Table.from_pylist([run], schema=RUNS), layout.run_file(run_id, "run.parquet"), RUNS)
    return {"predictions_rows": n_pred, "coder_bytes": coder_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--dim", type=int, default=256, help="embedding dim (ViT-S-32-alt: 256)")
    ap.add_argument("--per-shard", type=int, default=10_000, help="images per shard file")
    ap.add_argument("--runs", type=int, default=1, help="classify runs (each: every method x every image)")
    ap.add_argument("--coder-format", choices=("sparse", "dense"), default="sparse")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limit", type=float, default=1.0, help="target seconds per query")
    args = ap.parse_args()
    sql_files = sorted(SQL_DIR.glob("*.sql"))
    print_header(
        "duckdb_sql",
        {**vars(args), "methods": len(ZERO_SHOT_METHODS), "queries": [p.stem for p in sql_files]},
        ("duckdb", "pyarrow"),
    )
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
        layout = Layout.at(tmp)
        t0 = time.perf_counter()
        info = write_synthetic(layout, args)
        print(f"  wrote synthetic work dir in {time.perf_counter() - t0:.1f}s: {info}")
        t0 = time.perf_counter()
        refresh_views(layout)
        print(f"  refresh_views: {time.perf_counter() - t0:.3f}s")
        with duckdb.connect(str(layout.database), read_only=True) as con:
            counts = {v: con.sql(f"SELECT count(*) FROM {v}").fetchall()[0][0] for v in layout.view_globs()}
        print(f"  view row counts: {counts}")
        for path in sql_files:
            sql = path.read_text()
            tm = Timings(path.stem)
            rows = query(layout, sql).num_rows  # warm-up (OS file cache)
            for _ in range(args.repeats):
                tm.time(lambda sql=sql: query(layout, sql))
            print(f"  {path.stem}: {rows} rows, {tm.summary()}")
            result_line(
                f"sql {path.stem}", f"{tm.median:.3f} s", "-", "-", f"< {args.limit:g} s", tm.median < args.limit
            )


if __name__ == "__main__":
    main()
