"""Building CODER: coderflow (iter_coder + coder_table + write_stream to Parquet) vs one numpy matrix product.

Part 1 (time): N images x T texts, D-dim L2-normalised random embeddings. coderflow = iter_coder over the whole
matrix, each batch turned into an Arrow table (coder_table) and streamed into one Parquet file (write_stream: polars'
streaming Parquet sink, lz4, which encodes a batch while the next product runs), dense and top-k sparse. Baseline =
`x @ t.T` (numpy, same shapes, float32). Target: dense coderflow within 2x of the baseline, Parquet write included.
Also: the dense Parquet write alone (tables built beforehand: the floor of the write), seconds per 1k images and per
1k texts, and file bytes per image.

Part 2 (memory): the real per-shard task body (tasks.coder.task.build_coder_shard.fn, Prefect-free) over a
synthetic work directory of S-image shards, for two values of N, each in a fresh subprocess; peak RSS
(VmHWM, reset after the set-up) must stay flat as N grows.

    python benchmarks/coder.py                                  # N=20000, T=1000, D=256, memory at 10k and 40k
    python benchmarks/coder.py --images 100000 --texts 2000 --mem-sizes 20000,200000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import Timings, peak_rss_mb, print_header, result_line

from coderflow.storage.parquet_io import write_stream
from coderflow.storage.schemas import CODER, list_array
from coderflow.tasks.coder.build import coder_table, iter_coder

META = {"dataset": "bench", "split": "test", "model_id": "ViT-S-32-alt__random", "textbank_id": "bench0000"}


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.standard_normal((n, d), dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def build(x: np.ndarray, t: np.ndarray, keys: list[str], labels: np.ndarray, out: Path, bs: int, top_k) -> int:
    batches = (
        coder_table(b, keys[b.start : b.start + len(b)], labels[b.start : b.start + len(b)], **META)
        for b in iter_coder(x, t, bs, top_k)
    )
    return write_stream(batches, CODER, out)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def vm_hwm_mb() -> float:
    return _status_mb("VmHWM")


def reset_peak_rss() -> None:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


# memory: the real task body over a synthetic work directory, in a subprocess ---------------------------------
def memory_child(n_images: int, n_texts: int, dim: int, per_shard: int, fmt: str) -> dict:
    from coderflow.config import CoderConfig
    from coderflow.storage.layout import Layout, content_id
    from coderflow.storage.parquet_io import write_table
    from coderflow.storage.schemas import IMAGE_EMBEDDINGS, TEXT_EMBEDDINGS, TEXTS
    from coderflow.tasks.coder.task import build_coder_shard

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-coder-mem-") as tmp:
        layout = Layout.at(tmp)
        mid, bank = META["model_id"], META["textbank_id"]
        texts = [f"a photo of thing {i}" for i in range(n_texts)]
        ids = [content_id(s) for s in texts]
        write_table(
            pa.table(
                {
                    "text_id": ids,
                    "textbank_id": [bank] * n_texts,
                    "text_index": pa.array(range(n_texts), pa.int32()),
                    "class_index": pa.array([i % 100 for i in range(n_texts)], pa.int32()),
                    "class_name": [f"class {i % 100}" for i in range(n_texts)],
                    "text_type": ["att"] * n_texts,
                    "other_class_index": pa.nulls(n_texts, pa.int32()),
                    "text": texts,
                    "source": ["bench"] * n_texts,
                    "n_tokens": pa.array([8] * n_texts, pa.int32()),
                    "truncated": [False] * n_texts,
                }
            ),
            layout.textbank_file(bank),
            TEXTS,
        )
        t = unit_rows(rng, n_texts, dim)
        write_table(
            pa.table({"text_id": ids, "model_id": [mid] * n_texts, "embedding": list(t)}),
            layout.text_embedding_part(mid, "0"),
            TEXT_EMBEDDINGS,
        )
        parts = []
        for s, start in enumerate(range(0, n_images, per_shard)):
            n = min(per_shard, n_images - start)
            emb = unit_rows(rng, n, dim)
            out = layout.image_embedding_part(mid, "bench", "test", f"bench-test-{s:06d}", f"{s:064x}")
            table = pa.table(
                {
                    "sample_key": [f"k{start + i:08d}" for i in range(n)],
                    "dataset": ["bench"] * n,
                    "split": ["test"] * n,
                    "shard": [out.stem] * n,
                    "shard_hash": [f"{s:064x}"] * n,
                    "label": pa.array(rng.integers(0, 100, n), pa.int32()),
                    "model_id": [mid] * n,
                    "embedding": list_array(emb, pa.float32()),
                    "status": ["ok"] * n,
                    "error": pa.nulls(n, pa.string()),
                }
            )
            parts.append(write_table(table, out, IMAGE_EMBEDDINGS))
            del table, emb
        del t, rng
        gc.collect()
        rss_before = current_rss_mb()
        reset_peak_rss()  # the peak from here on is the build's, not the set-up's
        cfg = CoderConfig(format=fmt)
        t0 = time.perf_counter()
        rows = sum(build_coder_shard.fn(str(p), bank, mid, "bench", "test", cfg, str(layout.root)).rows for p in parts)
        elapsed = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in layout.coder_dir(mid, bank, "bench", "test").glob("*.parquet"))
        return {
            "rows": rows,
            "seconds": elapsed,
            "rss_mb_before_build": rss_before,
            "peak_rss_mb": vm_hwm_mb(),
            "bytes": size,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="N images (time benchmark)")
    ap.add_argument("--texts", type=int, default=1000, help="T texts")
    ap.add_argument("--dim", type=int, default=256, help="embedding dim (ViT-S-32-alt: 256)")
    ap.add_argument("--batch-size", type=int, default=2048, help="images per matrix product (CoderConfig default)")
    ap.add_argument("--top-k", type=int, default=256, help="k of the sparse format (CoderConfig default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mem-sizes", default="10000,40000", help="N values of the memory test (comma-separated)")
    ap.add_argument("--per-shard", type=int, default=1000, help="images per shard in the memory test")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, fmt = args.child.split(":")
        print(json.dumps(memory_child(int(n), args.texts, args.dim, args.per_shard, fmt)))
        return

    print_header(
        "coder",
        {
            "images": args.images,
            "texts": args.texts,
            "dim": args.dim,
            "batch_size": args.batch_size,
            "top_k": args.top_k,
            "repeats": args.repeats,
            "numpy_threads": os.environ.get("OMP_NUM_THREADS", "default (all cores)"),
        },
        ("numpy", "pyarrow", "polars"),
    )
    rng = np.random.default_rng(0)
    x, t = unit_rows(rng, args.images, args.dim), unit_rows(rng, args.texts, args.dim)
    keys = [f"k{i:08d}" for i in range(args.images)]
    labels = rng.integers(0, 100, args.images).astype(np.int32)
    gemm, dense, sparse, write = Timings("numpy x @ t.T"), Timings("dense"), Timings("sparse"), Timings("write")
    tables = [
        coder_table(b, keys[b.start : b.start + len(b)], labels[b.start : b.start + len(b)], **META)
        for b in iter_coder(x, t, args.batch_size)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-coder-") as tmp:
        d_out, s_out, w_out = (Path(tmp) / f"{name}.parquet" for name in ("dense", "sparse", "write"))
        x @ t.T  # warm-up
        runs = [
            (gemm, lambda: x @ t.T),
            (dense, lambda: build(x, t, keys, labels, d_out, args.batch_size, None)),
            (sparse, lambda: build(x, t, keys, labels, s_out, args.batch_size, args.top_k)),
            (write, lambda: write_stream(tables, CODER, w_out)),
        ]
        for r in range(args.repeats):
            for tm, fn in runs[r % len(runs) :] + runs[: r % len(runs)]:  # interleaved, order rotating
                tm.time(fn)
        d_bytes, s_bytes = d_out.stat().st_size, s_out.stat().st_size
    n, m = args.images, args.texts
    print(f"  baseline numpy x @ t.T ({n}x{args.dim} @ {args.dim}x{m}): {gemm.summary()}")
    print(f"  coderflow dense  (+ Arrow + Parquet): {dense.summary()}")
    print(f"  dense Parquet write alone (tables built beforehand): {write.summary()}")
    print(f"  coderflow sparse top-{args.top_k}: {sparse.summary()}")
    for name, tm in (("dense", dense), ("sparse", sparse)):
        print(
            f"  {name}: {tm.median / n * 1000:.4f} s per 1k images (at {m} texts), "
            f"{tm.median / m * 1000:.4f} s per 1k texts (at {n} images), "
            f"{tm.median / (n * m) * 1e9:.2f} ns per cosine"
        )
    raw = 4 * m
    print(
        f"  file size per image: dense {d_bytes / n:.0f} B (raw float32 {raw} B), "
        f"sparse top-{args.top_k} {s_bytes / n:.0f} B (raw {8 * args.top_k} B)"
    )
    ratio = dense.median / gemm.median
    result_line(
        f"coder dense build+write {n}x{m}",
        f"{dense.median:.3f} s",
        f"{gemm.median:.3f} s",
        f"{ratio:.1f}x",
        "<= 2x",
        ratio <= 2,
    )
    result_line(
        f"coder sparse top-{args.top_k} build+write {n}x{m}",
        f"{sparse.median:.3f} s",
        f"{gemm.median:.3f} s",
        f"{sparse.median / gemm.median:.1f}x",
        "(info)",
        None,
    )
    result_line(
        f"coder dense Parquet write alone {n}x{m}",
        f"{write.median:.3f} s",
        f"{gemm.median:.3f} s",
        f"{write.median / gemm.median:.1f}x",
        "(info: floor)",
        None,
    )
    result_line(
        "coder file bytes/image", f"dense {d_bytes / n:.0f} / sparse {s_bytes / n:.0f}", f"raw {raw}", "-", "-", None
    )

    sizes = [int(s) for s in args.mem_sizes.split(",")]
    peaks = {}
    for fmt in ("dense", "sparse"):
        for size in sizes:
            cmd = [sys.executable, __file__, "--child", f"{size}:{fmt}", "--texts", str(args.texts)]
            cmd += ["--dim", str(args.dim), "--per-shard", str(args.per_shard)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            peaks[(fmt, size)] = out["peak_rss_mb"]
            print(
                f"  memory {fmt} N={size} ({args.per_shard}/shard, build_coder_shard.fn per shard): "
                f"peak RSS {out['peak_rss_mb']:.0f} MiB (RSS at start of build {out['rss_mb_before_build']:.0f} MiB), "
                f"{out['seconds']:.2f} s, {out['seconds'] / size * 1000:.4f} s per 1k images"
            )
        lo, hi = peaks[(fmt, sizes[0])], peaks[(fmt, sizes[-1])]
        grow = hi / lo
        result_line(
            f"coder peak RSS {fmt}, N={sizes[0]} -> {sizes[-1]}",
            f"{lo:.0f} -> {hi:.0f} MiB",
            "-",
            f"{grow:.2f}x",
            "flat (<= 1.1x)",
            grow <= 1.1,
        )


if __name__ == "__main__":
    main()
