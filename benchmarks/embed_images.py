"""Image embedding stage: coderflow (shards -> embed_samples -> Parquet) vs a bare open_clip + DataLoader loop.

coderflow side: what tasks.embed.task.embed_shard does without Prefect, per shard:
    storage.shards.iter_samples -> tasks.embed.encode.embed_samples -> storage.parquet_io.write_table
with shards mapped the way the flows' thread runner maps them: `flows.runners.THREADS` (2) shards in flight at once.
The same body one shard at a time is measured too (`--in-flight`), for information.
baseline: the loop a user would write: webdataset over the same shards, PIL decode + the model's preprocess in a
torch DataLoader, model.encode_image, L2-normalise, numpy. Same model weights, batch size and torch threads.

Target: coderflow throughput (shards in flight as in the flows) >= 0.95x the baseline.

    python benchmarks/embed_images.py                      # 160 images, 64x64, batch 64, 5 repeats
    python benchmarks/embed_images.py --images 2000 --image-size 224 --repeats 7
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch
import webdataset as wds
from _common import Timings, count_flops, matmul_rate, print_header, result_line
from PIL import Image

from coderflow.flows.runners import THREADS
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_table
from coderflow.storage.schemas import IMAGE_EMBEDDINGS
from coderflow.storage.shards import iter_samples, list_shards, write_split
from coderflow.tasks.embed.encode import decode_workers, embed_samples
from coderflow.tasks.embed.model import load_model
from coderflow.tasks.ingest.sources import demo_source


def make_shards(root: Path, n_images: int, image_size: int, per_shard: int) -> list[Path]:
    src = demo_source(images_per_class=max(1, n_images // 10), image_size=image_size)
    layout = Layout.at(root)
    shard_dir = layout.shard_dir("demo", "test")
    pattern = Path(layout.shard_pattern("demo", "test")).name
    write_split(src.samples, shard_dir, pattern, per_shard, src.info)
    return list_shards(shard_dir)


def run_coderflow(shards: list[Path], lm, batch_size: int, out_dir: Path, in_flight: int = THREADS) -> int:
    """Every shard through the embed-shard body, `in_flight` shards at once on threads; returns the rows written."""

    def one(shard: Path) -> int:
        out = out_dir / f"{shard.stem}.parquet"
        table = embed_samples(
            iter_samples(shard), lm, batch_size, {"dataset": "demo", "split": "test", "shard": out.stem},
            workers=decode_workers(),  # as embed_shard: one decode process per core
        )  # fmt: skip
        write_table(table, out, IMAGE_EMBEDDINGS)
        return table.num_rows

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        return sum(pool.map(one, shards))


def bare_loader(shards: list[Path], preprocess, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    def decode(sample):
        img = Image.open(io.BytesIO(sample["png"])).convert("RGB")
        return preprocess(img), int(sample["cls"])

    ds = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False).map(decode)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)


@torch.inference_mode()
def run_bare(model, loader) -> int:
    out = []
    for images, _labels in loader:
        out.append(torch.nn.functional.normalize(model.encode_image(images), dim=-1).numpy())
    return len(np.concatenate(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160, help="images (demo source, 10 classes)")
    ap.add_argument("--image-size", type=int, default=64, help="stored image side in pixels (model input is 224)")
    ap.add_argument("--per-shard", type=int, default=100, help="samples per shard (coderflow default 100)")
    ap.add_argument("--batch-size", type=int, default=64, help="inference batch (coderflow default 64)")
    ap.add_argument("--model", default="ViT-S-32-alt")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--workers", default="0,1", help="baseline DataLoader worker counts to compare, comma-separated")
    ap.add_argument(
        "--in-flight",
        default=f"{THREADS},1",
        help="coderflow shards at once, comma-separated; the first is held to the target (flows use %(default)s)",
    )
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print_header(
        "embed_images",
        {
            "model": f"{args.model} (random weights, pretrained=None)",
            "torch_threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "images": args.images,
            "image_size": f"{args.image_size}px stored, 224px model input",
            "per_shard": args.per_shard,
            "baseline_workers": args.workers,
            "coderflow_shards_in_flight": args.in_flight,
            "repeats": args.repeats,
        },
        ("torch", "open_clip_torch", "webdataset", "pyarrow"),
    )
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        shards = make_shards(tmp, args.images, args.image_size, args.per_shard)
        print(f"  wrote {len(shards)} shards in {time.perf_counter() - t0:.1f}s")
        lm = load_model(args.model, None)
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
        model.load_state_dict(lm.model.state_dict())  # same weights on both sides
        model.eval()

        # correctness: both sides produce the same embeddings
        out_dir = tmp / "emb"
        n = run_coderflow(shards, lm, args.batch_size, out_dir)
        import pyarrow.parquet as pq

        ours = np.concatenate(
            [np.stack(pq.read_table(p)["embedding"].to_numpy(zero_copy_only=False)) for p in sorted(out_dir.glob("*"))]
        )
        with torch.inference_mode():
            theirs = np.concatenate(
                [
                    torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
                    for x, _ in bare_loader(shards, preprocess, args.batch_size, 0)
                ]
            )
        assert n == len(theirs) == args.images // 10 * 10, (n, len(theirs))
        diff = float(np.abs(ours - theirs).max())
        print(f"  max |coderflow - baseline| embedding difference: {diff:.2e}")
        assert diff < 1e-3, diff

        workers = [int(w) for w in args.workers.split(",")]
        in_flight = [int(k) for k in args.in_flight.split(",")]
        cfs = {k: (Timings(f"coderflow in_flight={k}"), Timings("cpu")) for k in in_flight}
        bls = {w: (Timings(f"baseline workers={w}"), Timings("cpu")) for w in workers}
        sides = [
            (wall, cpu, lambda k=k: run_coderflow(shards, lm, args.batch_size, tmp / f"emb-{k}", k))
            for k, (wall, cpu) in cfs.items()
        ]
        sides += [
            (wall, cpu, lambda w=w: run_bare(model, bare_loader(shards, preprocess, args.batch_size, w)))
            for w, (wall, cpu) in bls.items()
        ]
        for i in range(args.repeats):  # interleaved, rotating order, so that other users' load hits all sides alike
            k = i % len(sides)
            for wall, cpu, fn in sides[k:] + sides[:k]:
                c0 = time.process_time()
                wall.time(fn)
                cpu.add(time.process_time() - c0)
            times = ", ".join(f"{t.name} {t.samples[-1]:.2f}s" for t, _, _ in sides)
            print(f"  repeat {i}: {times}, load {os.getloadavg()[0]:.1f}")
        n = args.images // 10 * 10
        rate = matmul_rate()
        probe = torch.stack([preprocess(Image.new("RGB", (args.image_size, args.image_size)))] * 8)
        per_image = count_flops(lambda: model.encode_image(probe)) / len(probe)
        print(f"  model: {per_image / 1e9:.2f} GFLOP per image; fp32 matmul in this process {rate / 1e9:.1f} GFLOP/s")
        for t, cpu, _ in sides:
            achieved = n * per_image / t.median
            print(
                f"  {t.name}: {t.summary()} -> {n / t.median:.1f} img/s; CPU time {cpu.summary()}; "
                f"{achieved / 1e9:.1f} GFLOP/s = FLOP utilisation {achieved / rate:.2f}"
            )
        best = min(t.median for t, _, _ in sides[: len(cfs)])
        utilisation = n * per_image / best / rate
        result_line(
            "embed_images FLOP utilisation (model FLOP/s over this process's matmul FLOP/s)",
            f"{utilisation:.2f}", "1.00 (matmul)", f"{utilisation:.2f}", "-", None,
        )  # fmt: skip
        for j, (k, (cf, _)) in enumerate(cfs.items()):
            for w, (bl, _) in bls.items():
                ratios = sorted(b / c for c, b in zip(cf.samples, bl.samples, strict=True))
                ratio = bl.median / cf.median
                print(
                    f"  throughput ratio coderflow in_flight={k} / baseline workers={w}: {ratio:.3f} "
                    f"(per-repeat min {ratios[0]:.3f}, max {ratios[-1]:.3f})"
                )
                result_line(
                    f"embed_images throughput ({k} shards in flight vs DataLoader num_workers={w})",
                    f"{n / cf.median:.1f} img/s",
                    f"{n / bl.median:.1f} img/s",
                    f"{ratio:.3f}",
                    ">= 0.95" if j == 0 else "-",
                    ratio >= 0.95 if j == 0 else None,
                )


if __name__ == "__main__":
    main()
