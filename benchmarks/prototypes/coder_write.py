"""Prototype of the recommended CODER write fix, measured against the current write_stream (not used by coderflow).

Current storage.parquet_io.write_stream: pq.ParquetWriter(tmp, schema, compression="zstd") with pyarrow's default
use_dictionary=True, so the float list columns (vector, values) are first dictionary-encoded, then fall back to plain
once the dictionary page overflows; plus a per-batch `.cast(schema)` that copies the list columns.
Proposed: dictionary encoding for the string columns only, no cast when the batch already has the schema.

    python benchmarks/prototypes/coder_write.py [--images 20000 --texts 1000 --repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import Timings, print_header
from coder import META, build, unit_rows

from coderflow.storage.parquet_io import atomic_path
from coderflow.storage.schemas import CODER
from coderflow.tasks.coder.build import coder_table, iter_coder


def write_stream_proposed(tables, schema: pa.Schema, target, compression="zstd") -> int:
    """write_stream with dictionary encoding limited to string columns and no cast of already-typed batches."""
    dict_cols = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    rows = 0
    with (
        atomic_path(target) as tmp,
        pq.ParquetWriter(tmp, schema, compression=compression, use_dictionary=dict_cols) as writer,
    ):
        for table in tables:
            table = table.select(schema.names)
            if not table.schema.equals(schema):
                table = table.cast(schema)
            writer.write_table(table)
            rows += table.num_rows
    return rows


def build_proposed(x, t, keys, labels, out, bs, top_k, compression="zstd") -> int:
    batches = (
        coder_table(b, keys[b.start : b.start + len(b)], labels[b.start : b.start + len(b)], **META)
        for b in iter_coder(x, t, bs, top_k)
    )
    return write_stream_proposed(batches, CODER, out, compression)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print_header("prototype: CODER Parquet write", vars(args), ("numpy", "pyarrow"))
    rng = np.random.default_rng(0)
    x, t = unit_rows(rng, args.images, args.dim), unit_rows(rng, args.texts, args.dim)
    keys = [f"k{i:08d}" for i in range(args.images)]
    labels = rng.integers(0, 100, args.images).astype(np.int32)
    variants = {
        "gemm x @ t.T": lambda out, k: x @ t.T,
        "current": lambda out, k: build(x, t, keys, labels, out, 2048, k),
        "proposed zstd": lambda out, k: build_proposed(x, t, keys, labels, out, 2048, k),
        "proposed no compression": lambda out, k: build_proposed(x, t, keys, labels, out, 2048, k, "none"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, k in (("dense", None), ("sparse", args.top_k)):
            tms = {name: Timings(name) for name in variants}
            sizes = {}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    out = Path(tmp) / f"{fmt}-{name.replace(' ', '_')}.parquet"
                    tms[name].time(lambda fn=fn, out=out, k=k: fn(out, k))
                    if out.exists():
                        sizes[name] = out.stat().st_size / args.images
            base = tms["gemm x @ t.T"].median
            for name, tm in tms.items():
                size = f", {sizes[name]:.0f} B/image" if name in sizes else ""
                print(f"  {fmt:6s} {name:24s}: {tm.summary()} = {tm.median / base:.2f}x gemm{size}")
            a, b = (
                pq.read_table(Path(tmp) / f"{fmt}-current.parquet"),
                pq.read_table(Path(tmp) / f"{fmt}-proposed_zstd.parquet"),
            )
            assert a.equals(b), "proposed write changed the data"


if __name__ == "__main__":
    main()
