"""CODER write variants, each timed against one numpy matrix product of the same shapes (not used by coderflow).

`before`: the write_stream of the "After the fixes" figures (zstd and statistics on every column, one thread).
`options`: today's `_options` (float lists uncompressed, no statistics on them), one thread.
`write_stream`: today's storage.parquet_io.write_stream (`options` + a writer thread overlapping the next product).
`bss+zstd`: BYTE_STREAM_SPLIT + zstd on the float lists, one thread (the smallest files).
`write only`: the Parquet write alone of precomputed tables (today's options, one thread), the floor of the write.

    python benchmarks/prototypes/coder_write.py [--images 20000 --texts 1000 --dim 256 --repeats 9]
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

from coderflow.storage import parquet_io
from coderflow.storage.schemas import CODER
from coderflow.tasks.coder.build import coder_table, iter_coder


def write_sequential(tables, schema: pa.Schema, target, options: dict) -> int:
    rows = 0
    with parquet_io.atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        for table in tables:
            writer.write_table(parquet_io._conform(table, schema))
            rows += table.num_rows
    return rows


def before_options(schema: pa.Schema) -> dict:
    return {"compression": "zstd", "use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)]}


def bss_options(schema: pa.Schema) -> dict:
    options = parquet_io._options(schema)
    floats = [leaf for leaf, codec in options["compression"].items() if codec == "none"]
    options["compression"].update(dict.fromkeys(floats, "zstd"))
    return {**options, "column_encoding": dict.fromkeys(floats, "BYTE_STREAM_SPLIT")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    print_header("prototype: CODER Parquet write variants", vars(args), ("numpy", "pyarrow"))
    rng = np.random.default_rng(0)
    x, t = unit_rows(rng, args.images, args.dim), unit_rows(rng, args.texts, args.dim)
    keys = [f"k{i:08d}" for i in range(args.images)]
    labels = rng.integers(0, 100, args.images).astype(np.int32)

    def tables():
        for b in iter_coder(x, t, 2048):
            yield coder_table(b, keys[b.start : b.start + len(b)], labels[b.start : b.start + len(b)], **META)

    precomputed = list(tables())
    variants = {
        "gemm x @ t.T": None,
        "before": lambda out: write_sequential(tables(), CODER, out, before_options(CODER)),
        "options": lambda out: write_sequential(tables(), CODER, out, parquet_io._options(CODER)),
        "write_stream": lambda out: build(x, t, keys, labels, out, 2048, None),
        "bss+zstd": lambda out: write_sequential(tables(), CODER, out, bss_options(CODER)),
        "write only": lambda out: write_sequential(precomputed, CODER, out, parquet_io._options(CODER)),
    }
    tms, sizes = {name: Timings(name) for name in variants}, {}
    x @ t.T  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            names = list(variants)
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                fn, out = variants[name], Path(tmp) / f"{name.replace(' ', '_')}.parquet"
                tms[name].time(lambda fn=fn, out=out: x @ t.T if fn is None else fn(out))
                if fn is not None:
                    sizes[name] = out.stat().st_size / args.images
        reference = pq.read_table(Path(tmp) / "before.parquet")
        for name in ("options", "write_stream", "bss+zstd"):
            assert pq.read_table(Path(tmp) / f"{name}.parquet").equals(reference), f"{name} changed the data"
    base = tms["gemm x @ t.T"].median
    for name, tm in tms.items():
        size = f", {sizes[name]:.0f} B/image" if name in sizes else ""
        print(f"  dense {name:14s}: {tm.summary()} = {tm.median / base:.2f}x gemm{size}")


if __name__ == "__main__":
    main()
