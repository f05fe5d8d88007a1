"""The demo-size pipeline stage by stage on one device, without Prefect: seconds per stage at each precision.

The stages call the functions the flows call, on `--device` (cuda or cpu): ingest (the demo source's samples,
generated), image embedding (`tasks.embed.encode.embed_samples`, decode in threads), text embedding
(`encode_texts` over a bank of name, template and attribute prompts for the demo classes), CODER vectors
(`tasks.coder.build.coder_matrix`) and the zero-shot scores of clip and CODER (`tasks.classify.methods`). Weights are
random (`--pretrained` for real ones), so accuracy is not reported; each stage's seconds and rows are, one JSON line
per (precision, stage). Run by benchmarks/gpu_pipeline.sh on a lent GPU machine, where Prefect, DuckDB and polars are
not installed (too large to carry); the flows' own overhead is measured on CPU by benchmarks/end_to_end.py.

    python benchmarks/gpu_stages.py --device cuda --precision fp32,bf16 --images-per-class 200
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def timed(stage: str, log: dict[str, Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run fn(*args, **kwargs), print one JSON line with its seconds (CUDA synchronised around it), return its
    value."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    print(json.dumps({**log, "stage": stage, "seconds": round(time.perf_counter() - start, 4)}), flush=True)
    return value


def bank(classnames: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, class index and text type of a CODER-shaped bank: one name prompt, CLIP's 80 templates and five
    attribute sentences per class."""
    from coderflow.tasks.texts.clip_templates import OPENAI_IMAGENET_TEMPLATES

    texts, index, kind = [], [], []
    attributes = ("sharp edges", "a plain background", "one colour", "a round part", "a repeated pattern")
    for c, name in enumerate(classnames):
        rows = [("name", f"a photo of a {name}.")]
        rows += [("template", t.replace("{c}", name)) for t in OPENAI_IMAGENET_TEMPLATES]
        rows += [("att", f"a {name}, which has {a}.") for a in attributes]
        texts += [t for _, t in rows]
        index += [c] * len(rows)
        kind += [k for k, _ in rows]
    return texts, np.asarray(index), np.asarray(kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--images-per-class", type=int, default=200, help="demo images per class (10 classes)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    import torch

    from coderflow.tasks.classify.methods import clip_logits, coder_scores
    from coderflow.tasks.coder.build import coder_matrix
    from coderflow.tasks.embed.encode import embed_samples, encode_texts
    from coderflow.tasks.embed.model import load_model
    from coderflow.tasks.ingest.sources import demo_source

    info = {"device": args.device, "model": args.model, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(info), flush=True)
    source = demo_source(args.images_per_class, args.image_size, 0, "test")
    log = {"precision": None, "model": args.model}
    samples = timed("ingest (demo images generated)", log, list, source.samples)
    texts, index, kind = bank(source.classnames)
    n = len(source.classnames)
    meta = {"dataset": "demo", "split": "test", "shard": "all", "shard_hash": "-"}
    for precision in args.precision.split(","):
        log = {"precision": precision, "model": args.model, "images": len(samples), "texts": len(texts)}
        lm = timed("load model", log, load_model, args.model, args.pretrained, args.device, precision)
        images = timed("embed images", log, embed_samples, samples, lm, args.batch_size, meta, n_classes=n)
        x = np.stack(images["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
        t = timed("embed texts", log, encode_texts, texts, lm)
        cosines = timed("coder vectors", log, coder_matrix, x, t)
        timed("classify clip", log, clip_logits, x, t, index, kind, n)
        timed("classify coder", log, coder_scores, cosines, index, kind, n)
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(json.dumps({**log, "stage": "peak GPU memory", "GiB": round(peak, 2)}), flush=True)
            torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
