"""Image decode + preprocess throughput of the embedding stage's worker processes, and its scaling with workers.

What a GPU machine needs from the CPU side: ImageNet-size JPEGs (500x375, quality 90, photo-like content) decoded
with PIL and preprocessed to 224 px by open_clip's eval transform (resize, center crop, normalise), in the decode
worker processes of tasks/embed/encode.py (`decode_pool`, the same code the pipeline runs), with no model. The pool
is started and warmed up before timing. Reports images/s for 1..N workers and the scaling from 1 to 2 workers
(target >= 1.8x on the 2-core machine), and what a 16-core machine would reach at the measured per-worker rate.

    python benchmarks/decode_images.py                 # 512 JPEGs, workers 1 and 2, 3 repeats
    python benchmarks/decode_images.py --images 2048 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import io
from functools import partial

import numpy as np
from _common import Timings, print_header, result_line
from PIL import Image, ImageFilter


def photo_like_jpegs(n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[bytes]:
    """JPEG bytes of smooth colour fields with noise and edges (compresses like a photo, unlike flat colour)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size, Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import open_clip

    from coderflow.tasks.embed.encode import _decoded_batches, _prepare_in_worker, decode_pool

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32-alt")  # the eval transform, 224 px
    jpegs = photo_like_jpegs(args.images)
    samples = [{"__key__": f"k{i}", "jpg": b, "cls": b"0"} for i, b in enumerate(jpegs)]
    print_header(
        "decode_images",
        {
            "images": args.images,
            "jpeg_kb_mean": round(np.mean([len(b) for b in jpegs]) / 1024, 1),
            "image_size": "500x375 -> 224",
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        },
        ("pillow", "torch", "torchvision"),
    )
    rates = {}
    for workers in args.workers:
        pool = decode_pool(preprocess, workers)
        prepare = partial(_prepare_in_worker, n_classes=None)
        chunk = max(1, args.batch_size // (2 * workers))
        list(pool.map(prepare, samples[: 4 * workers], chunksize=1))  # start and warm every worker
        timing = Timings(f"{workers} workers")
        for _ in range(args.repeats):
            n = timing.time(
                lambda p=pool, c=chunk, f=prepare: sum(
                    len(b) for b in _decoded_batches(samples, f, args.batch_size, p, c)
                )
            )
            assert n == len(samples)
        rates[workers] = args.images / timing.median
        print(f"  {workers} worker(s): {rates[workers]:.1f} images/s ({timing.summary()})", flush=True)
    if 1 in rates and 2 in rates:
        scaling = rates[2] / rates[1]
        result_line(
            "decode + preprocess, 1 -> 2 workers", f"{rates[2]:.1f} img/s", f"{rates[1]:.1f} img/s (1 worker)",
            f"{scaling:.2f}x", ">= 1.8x", scaling >= 1.8,
        )  # fmt: skip
        print(f"  16 workers at the measured per-worker rate: ~{16 * rates[1] * min(1.0, scaling / 2):.0f} images/s")


if __name__ == "__main__":
    main()
