"""Load test: a large synthetic run end to end through the real flows, with time and peak RSS per stage.

    python benchmarks/load_test.py                              # 20,000 16x16 images, 50 shards, 5,000 texts
    python benchmarks/load_test.py --compare 5000,20000         # two sizes, each in its own process: is memory flat?
    python benchmarks/load_test.py --model ViT-S-32-alt --images 2000   # a real architecture at 224 px (slower)

The default model is a tiny ViT registered with open_clip for this run (32 px input, 2 layers, width 64), so the
figures measure the pipeline (decoding, sharding, Parquet, Prefect mapping, DuckDB), not the network. Peak RSS per
stage is sampled from /proc/self/status every 20 ms while the stage runs. Not part of the pytest suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TINY = "coderflow-load-tiny"
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Stages:
    """Times stages and samples this process's RSS while each runs."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str, **info: Any):
        peak = {"mb": rss_mb()}
        start_mb, stop = peak["mb"], threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak["mb"] = max(peak["mb"], rss_mb())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        try:
            yield info
        finally:
            seconds = time.perf_counter() - t0
            stop.set()
            thread.join()
            peak["mb"] = max(peak["mb"], rss_mb())
            row = {"stage": name, "seconds": round(seconds, 2), "rss_start_mb": round(start_mb),
                   "rss_peak_mb": round(peak["mb"]), **info}  # fmt: skip
            self.rows.append(row)
            print(json.dumps(row), flush=True)


def register_tiny_model(folder: Path) -> None:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)


def write_image_folder(root: Path, n_images: int, n_classes: int, size: int = 16, seed: int = 0) -> None:
    """n_images tiny PNGs in n_classes folders: a coloured background with a class-specific shape."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        (root / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        c = i % n_classes
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        img = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(img)
        r = 2 + c % 6
        d.ellipse([8 - r, 8 - r, 8 + r, 8 + r], fill=tuple(255 - v for v in bg)) if c % 2 else d.rectangle(
            [8 - r, 8 - r, 8 + r, 8 + r], fill=tuple(255 - v for v in bg)
        )
        img.save(root / f"class_{c:04d}" / f"{i:07d}.png")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import coderflow  # noqa: F401  (offline Prefect settings)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="coderflow-load-"))
    model = args.model
    if model == "tiny":
        register_tiny_model(work / "model-configs")
        model = TINY
    from coderflow.config import DatasetConfig, ModelConfig, TextsConfig
    from coderflow.flows.pipeline import build_coder, classify, embed_images, ingest_dataset, text_bank

    stages = Stages()
    images_dir = work / "images"
    with stages.stage("write image folder", images=args.images, classes=args.classes):
        write_image_folder(images_dir, args.images, args.classes)
    ds = DatasetConfig(name="load", source=str(images_dir), kind="folder", samples_per_shard=args.per_shard)
    mc = ModelConfig(name=model, batch_size=args.batch_size)
    workdir = str(work / "w")
    with stages.stage("prefect start (first flow)"):
        ingest_dataset(DatasetConfig(name="warmup", demo_images_per_class=1), workdir)
    with stages.stage("ingest", per_shard=args.per_shard) as info:
        out = ingest_dataset(ds, workdir)
        info["shards"] = len(out.shards)
    with stages.stage("embed images") as info:
        out = embed_images(ds, mc, workdir, 0.01)
        info.update(rows=out.rows, errors=out.errors, shards_skipped=out.shards_skipped)
    templates = [f"a photo of a {{c}}, style {k}." for k in range(args.templates)]
    with stages.stage("texts (generate + embed)") as info:
        texts = text_bank(ds, mc, TextsConfig(types=("name",)), workdir, templates)
        info.update(texts=texts.n_texts)
    with stages.stage("coder") as info:
        info.update(rows=build_coder(ds, mc, texts.textbank_id, None, workdir).rows)
    with stages.stage("classify + evaluate", methods="clip,coder") as info:
        info["top1"] = classify(ds, mc, texts.textbank_id, ["clip", "coder"], workdir=workdir).top1
    from coderflow.storage.db import query
    from coderflow.storage.layout import Layout

    with stages.stage("sql over image_embeddings") as info:
        info.update(query(Layout.at(workdir), "SELECT count(*) AS n, count(DISTINCT sample_key) AS k FROM image_embeddings").to_pylist()[0])  # fmt: skip
    embed = next(r for r in stages.rows if r["stage"] == "embed images")
    print(json.dumps({"images_per_s": round(args.images / embed["seconds"], 1),
                      "max_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))  # fmt: skip
    print("| stage | seconds | RSS at start (MB) | peak RSS (MB) |\n|---|---:|---:|---:|")
    for r in stages.rows:
        print(f"| {r['stage']} | {r['seconds']} | {r['rss_start_mb']} | {r['rss_peak_mb']} |")
    print(f"work directory: {work}", flush=True)
    return stages.rows


def compare(args: argparse.Namespace) -> None:
    """Run each size in its own process and print peak RSS per stage side by side."""
    sizes = [int(s) for s in args.compare.split(",")]
    results: dict[int, list[dict[str, Any]]] = {}
    for n in sizes:
        cmd = [sys.executable, __file__, "--images", str(n), "--classes", str(args.classes),
               "--per-shard", str(args.per_shard), "--templates", str(args.templates), "--model", args.model,
               "--batch-size", str(args.batch_size)]  # fmt: skip
        print("$ " + " ".join(cmd), flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        results[n] = [json.loads(line) for line in out.splitlines() if line.startswith('{"stage"')]
    header = f"{'stage':<28}" + "".join(f"{f'{n} img: s':>14}{'peak MB':>9}" for n in sizes)
    print(header)
    for i, row in enumerate(results[sizes[0]]):
        cells = "".join(f"{results[n][i]['seconds']:>14}{results[n][i]['rss_peak_mb']:>9}" for n in sizes)
        print(f"{row['stage']:<28}{cells}")
    for n in sizes:
        ingest = next(r for r in results[n] if r["stage"] == "ingest")
        print(f"{n} images: {ingest['shards']} shards")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--classes", type=int, default=250)
    p.add_argument("--per-shard", type=int, default=400)
    p.add_argument("--templates", type=int, default=20, help="texts = classes x templates (default 5,000)")
    p.add_argument("--model", default="tiny", help="'tiny' (registered here) or any open_clip name")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workdir", default=None)
    p.add_argument("--compare", default=None, help="comma-separated image counts, each run in a fresh process")
    args = p.parse_args()
    compare(args) if args.compare else run(args)


if __name__ == "__main__":
    main()
