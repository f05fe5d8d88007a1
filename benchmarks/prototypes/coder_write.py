"""CODER Parquet encoders side by side, each timed against one numpy matrix product of the same shapes.

`pyarrow (before)`: the write_stream that coderflow had until polars: pq.ParquetWriter, float lists uncompressed and
without statistics, other columns zstd, a writer thread writing batch i while batch i+1 is computed.
`pyarrow bss+zstd`: the same with BYTE_STREAM_SPLIT + zstd on the float lists (the smallest files; rejected: slower).
`write_stream`: today's storage.parquet_io.write_stream (polars' streaming sink, lz4).
`* write only`: the encoder alone over tables built beforehand (its floor).

    python benchmarks/prototypes/coder_write.py [--images 20000 --texts 1000 --dim 256 --repeats 9]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import Timings, print_header
from coder import META, unit_rows

from coderflow.storage import atomic, parquet_io
from coderflow.storage.parquet_io import read_table, write_stream
from coderflow.storage.schemas import CODER
from coderflow.tasks.coder.build import coder_table, iter_coder


def pyarrow_options(schema: pa.Schema, float_codec: str = "none", bss: bool = False) -> dict:
    leaves = {f.name: f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name for f in schema}
    floats = {f.name for f in schema if pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type)}
    options = {
        "compression": {leaf: float_codec if name in floats else "zstd" for name, leaf in leaves.items()},
        "write_statistics": [leaf for name, leaf in leaves.items() if name not in floats],
        "use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)],
    }
    if bss:
        options["column_encoding"] = {leaves[name]: "BYTE_STREAM_SPLIT" for name in floats}
    return options


def pyarrow_stream(tables, schema: pa.Schema, target: Path, options: dict) -> int:
    """The previous write_stream: ParquetWriter with a writer thread one table behind the producer."""
    rows, last, pending = 0, None, None
    with (
        atomic.atomic_path(target) as tmp,
        pq.ParquetWriter(tmp, schema, **options) as writer,
        ThreadPoolExecutor(1) as pool,
    ):
        for table in tables:
            if last is not None:
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write_table, last)
            last = parquet_io._conform(table, schema)
            rows += last.num_rows
        if pending is not None:
            pending.result()
        if last is not None:
            writer.write_table(last)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    print_header("CODER Parquet encoders", vars(args), ("numpy", "pyarrow", "polars"))
    rng = np.random.default_rng(0)
    x, t = unit_rows(rng, args.images, args.dim), unit_rows(rng, args.texts, args.dim)
    keys = [f"k{i:08d}" for i in range(args.images)]
    labels = rng.integers(0, 100, args.images).astype(np.int32)

    def tables():
        for b in iter_coder(x, t, 2048):
            yield coder_table(b, keys[b.start : b.start + len(b)], labels[b.start : b.start + len(b)], **META)

    precomputed = list(tables())
    plain, bss = pyarrow_options(CODER), pyarrow_options(CODER, "zstd", bss=True)
    variants = {
        "gemm x @ t.T": None,
        "pyarrow (before)": lambda out: pyarrow_stream(tables(), CODER, out, plain),
        "pyarrow bss+zstd": lambda out: pyarrow_stream(tables(), CODER, out, bss),
        "write_stream": lambda out: write_stream(tables(), CODER, out),
        "pyarrow write only": lambda out: pyarrow_stream(precomputed, CODER, out, plain),
        "write_stream write only": lambda out: write_stream(precomputed, CODER, out),
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
        reference = read_table(Path(tmp) / "pyarrow_(before).parquet")
        for name in ("pyarrow bss+zstd", "write_stream"):
            got = read_table(Path(tmp) / f"{name.replace(' ', '_')}.parquet")
            assert got.equals(reference), f"{name} changed the data"
    base = tms["gemm x @ t.T"].median
    for name, tm in tms.items():
        size = f", {sizes[name]:.0f} B/image" if name in sizes else ""
        print(f"  dense {name:24s}: {tm.summary()} = {tm.median / base:.2f}x gemm{size}")


if __name__ == "__main__":
    main()
