"""ImageNet scale on one machine: 1000 classes, tens of thousands of images and texts, every stage against its floor.

The 1000 ImageNet class names come from the DCLIP descriptor file in ../shared/fixtures/descriptors (its keys, the
ImageNet label order). A CLIP_benchmark-layout dataset of `--images` small images (a coloured shape per image, the
class drawn from the label) is written once; then each stage runs as its own Prefect flow (in this process, an
ephemeral Prefect server): ingest, image embedding, the text bank (offline WordNet generator, every text type, one-vs-one
on), dense and sparse CODER, classification with every zero-shot method. Per stage: wall time, peak RSS (sampled every
0.1 s) and a floor: the model FLOPs of the work (counted with torch's FlopCounterMode on a real batch) at this
process's measured fp32 matmul rate, or one GEMM for CODER. Targets: the whole run finishes with peak RSS < 6 GB, and
no stage with a floor takes more than 3x it.

The model is a tiny open_clip architecture registered here (`bench-tiny`, 32 px images, a 4-layer text tower): the
point is coderflow's overhead around the model, which the floor makes visible; `--model ViT-S-32-alt` for a real one.

    python benchmarks/imagenet_scale.py                          # 50,000 images, bench-tiny
    python benchmarks/imagenet_scale.py --images 2000 --classes 100   # a quick check
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from _common import count_flops, matmul_rate, print_header, result_line
from PIL import Image, ImageDraw

DESCRIPTORS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "descriptors" / "descriptors_imagenet.json"
TINY = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}


class RssSampler:
    """Peak resident memory of this process per stage (VmRSS sampled every 0.1 s in a thread)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.rss())

    @contextmanager
    def stage(self, rows: list[dict[str, Any]], name: str, floor_s: float | None = None, **info: Any):
        self.peak = self.rss()
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        yield extra
        seconds = time.perf_counter() - start
        row = {"stage": name, "seconds": round(seconds, 1), "peak_rss_gb": round(self.peak / 2**30, 2), **info, **extra}
        floor = extra.pop("floor_s", floor_s)
        if floor:
            row |= {"floor_s": round(floor, 1), "x_floor": round(seconds / floor, 2)}
        rows.append(row)
        print("  " + json.dumps(row), flush=True)


def write_dataset(root: Path, classes: list[str], n_images: int, per_shard: int, size: int = 32, seed: int = 0) -> None:
    """A CLIP_benchmark layout: classnames.txt and test/<i>.tar of PNGs whose colour and shape depend on the label."""
    rng = np.random.default_rng(seed)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    labels = rng.integers(0, len(classes), n_images)
    n_shards = (n_images + per_shard - 1) // per_shard
    for s in range(n_shards):
        with wds.TarWriter(str(root / "test" / f"{s}.tar")) as sink:
            for i in range(s * per_shard, min(n_images, (s + 1) * per_shard)):
                label = int(labels[i])
                img = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(0, 255, 3)))
                hue = ((label * 37) % 255, (label * 91) % 255, (label * 53) % 255)
                ImageDraw.Draw(img).ellipse((4, 4, size - 4 - label % 8, size - 4), fill=hue)
                buf = io.BytesIO()
                img.save(buf, "PNG")
                sink.write({"__key__": f"s{i:07d}", "png": buf.getvalue(), "cls": str(label).encode()})
    (root / "test" / "nshards.txt").write_text(str(n_shards))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000, help="the first N ImageNet classes")
    ap.add_argument("--per-shard", type=int, default=2000)
    ap.add_argument("--model", default="bench-tiny")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--descriptors", type=Path, default=DESCRIPTORS)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the work directory here (default: a temp dir)")
    args = ap.parse_args()

    import open_clip

    if args.model == "bench-tiny":
        cfg_dir = Path(tempfile.mkdtemp(prefix="bench-model-"))
        (cfg_dir / "bench-tiny.json").write_text(json.dumps(TINY))
        open_clip.add_model_config(cfg_dir / "bench-tiny.json")
    classes = list(json.loads(args.descriptors.read_text()))[: args.classes]
    rate = matmul_rate()
    print_header(
        "imagenet_scale",
        {
            "images": args.images,
            "classes": len(classes),
            "model": f"{args.model} (random weights)",
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "matmul_gflops": round(rate / 1e9, 1),
        },
        ("torch", "open_clip_torch", "prefect", "duckdb", "polars"),
    )
    from coderflow.config import PipelineConfig
    from coderflow.flows.pipeline import build_coder, classify, embed_images, ingest_dataset, text_bank
    from coderflow.storage.layout import Layout
    from coderflow.storage.parquet_io import read_table
    from coderflow.tasks.embed.encode import causal_text_tower, encode_texts
    from coderflow.tasks.embed.model import load_model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-imagenet-"))
    source = work / "source"
    start = time.perf_counter()
    if not (source / "classnames.txt").exists():
        write_dataset(source, classes, args.images, args.per_shard)
    print(f"  dataset written in {time.perf_counter() - start:.1f} s ({source})", flush=True)
    cfg = PipelineConfig(
        workdir=str(work / "w"),
        dataset={"name": "imagenet", "kind": "wds", "source": str(source), "samples_per_shard": args.per_shard},
        model={"name": args.model, "batch_size": args.batch_size},
        texts={"types": ["name", "template", "att", "ana", "syno", "ovo"], "ovo_pairs": "nearest"},
    )
    workdir, ds, model = cfg.workdir, cfg.dataset, cfg.model
    lm = load_model(args.model, None)
    probe = torch.stack([lm.preprocess(Image.new("RGB", (32, 32)))] * 8)
    image_flops = count_flops(lambda: lm.model.encode_image(probe)) / len(probe)
    sampler, rows = RssSampler(), []
    whole = time.perf_counter()
    with sampler.stage(rows, "ingest"):
        ingest_dataset(ds, workdir)
    with sampler.stage(rows, "embed images", args.images * image_flops / rate, gflop_per_image=image_flops / 1e9):
        embed_images(ds, model, workdir)
    with sampler.stage(rows, "text bank (generate + embed)") as extra:
        bank = text_bank(ds, model, cfg.texts, workdir, None, cfg.classify)
        extra |= {"texts": bank.n_texts, "embedded": bank.embedded}
    # the text floor: the trimmed encoder's FLOPs on a sample of the bank's own texts, scaled to the bank
    all_texts = read_table(Layout.at(workdir).textbank_file(bank.textbank_id), ["text"])["text"].to_pylist()
    probe_texts = all_texts[:: max(1, len(all_texts) // 512)][:512]
    text_flops = count_flops(lambda: encode_texts(probe_texts, lm)) / len(probe_texts)
    text_floor = len(all_texts) * text_flops / rate
    rows[-1] |= {
        "floor_s": round(text_floor, 1), "x_floor": round(rows[-1]["seconds"] / text_floor, 2),
        "trimmed": causal_text_tower(lm.model) is not None,
    }  # fmt: skip
    n_texts, dim = bank.n_texts, encode_texts(["a"], lm).shape[1]
    gemm = 2 * args.images * n_texts * dim / rate
    with sampler.stage(rows, "CODER dense", gemm, texts=n_texts):
        build_coder(ds, model, bank.textbank_id, cfg.coder, workdir)
    sparse = cfg.coder.model_copy(update={"format": "sparse"})
    with sampler.stage(rows, "CODER sparse (top 256)", gemm):
        build_coder(ds, model, bank.textbank_id, sparse, workdir)
    # classify's floor: the image-text products the six methods need (CODER's cosines to every text once, and one
    # image x class-mean product each for clip, dclip, cupl and waffle) plus embedding WaffleCLIP's own prompts
    n_classes = len(classes)
    waffle_texts = n_classes * 2 * cfg.classify.waffle_pairs
    waffle_probe = [f"A photo of a {c}, which has aaa bbb." for c in classes[:256]]
    waffle_flops = count_flops(lambda: encode_texts(waffle_probe, lm)) / len(waffle_probe) * waffle_texts
    classify_floor = gemm + (4 * 2 * args.images * n_classes * dim + waffle_flops) / rate
    with sampler.stage(rows, "classify (all zero-shot methods)", classify_floor) as extra:
        result = classify(ds, model, bank.textbank_id, list(cfg.methods), workdir=workdir, classify=cfg.classify)
        extra["run_id"] = result.run_id
    total = time.perf_counter() - whole
    peak = max(r["peak_rss_gb"] for r in rows)
    print("  stages: " + json.dumps(rows), flush=True)
    worst = max((r["x_floor"] for r in rows if "x_floor" in r), default=0)
    result_line(
        f"ImageNet scale, {args.images} images x {n_texts} texts", f"{total:.0f} s, peak RSS {peak} GB",
        "-", f"worst stage {worst}x its floor", "peak RSS < 6 GB, every stage <= 3x its floor",
        peak < 6 and worst <= 3,
    )  # fmt: skip


if __name__ == "__main__":
    main()
