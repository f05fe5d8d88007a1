"""The encoders on a CUDA GPU: coderflow's image and text encoding at fp32/bf16/fp16 against open_clip's own calls.

What runs is coderflow's code path for a model on `--device cuda` (tasks/embed/model.load_model, encode_images,
encode_texts: the same functions as on CPU), with random weights of `--model` (no download). For each precision:

- images: `encode_images` over `--images` random 224-px inputs in batches of `--batch-size` (pinned memory,
  non-blocking copy, autocast), images/s, and the largest absolute difference from fp32 open_clip `encode_image`;
- texts: `encode_texts` (sorted by token length, each batch cut to its longest text) over CODER prompts of the ImageNet
  DCLIP descriptors, texts/s, against open_clip's padded `encode_text` at the same precision (speed-up), and the
  largest absolute difference from fp32 open_clip.

Embeddings are L2-normalised, so differences are on unit vectors. Figures go to stdout as JSON lines.

    python benchmarks/gpu_encode.py --model ViT-B-32 --images 8192 --prompts 8192
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from coderflow.tasks.embed.encode import encode_images, encode_texts
from coderflow.tasks.embed.model import load_model

DESCRIPTORS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "descriptors" / "descriptors_imagenet.json"


def prompts(path: Path, n: int) -> list[str]:
    """n CODER prompts ("a photo of a {c}.", "{c} which has {d}") from a DCLIP descriptor file, cycled if short."""
    data = json.loads(path.read_text())
    texts = [f"a photo of a {c}." for c in data] + [f"{c} which has {d}" for c, ds in data.items() for d in ds]
    return [texts[i % len(texts)] for i in range(n)]


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of `fn` over `repeats` runs after one warm-up, and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=8192)
    ap.add_argument("--descriptors", type=Path, default=DESCRIPTORS)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU path")
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, **vars(args)}, default=str))
    torch.manual_seed(0)
    x = torch.randn(args.images, 3, 224, 224)
    batches = list(torch.split(x, args.batch_size))
    texts = prompts(args.descriptors, args.prompts)
    ref_lm = load_model(args.model, None, "cuda", "fp32")
    with torch.no_grad():
        ref_img = np.concatenate(
            [torch.nn.functional.normalize(ref_lm.model.encode_image(b.cuda()).float(), dim=-1).cpu().numpy()
             for b in batches]
        )  # fmt: skip
    ref_txt = encode_texts(texts, ref_lm, trim=False)
    state = ref_lm.model.state_dict()
    for precision in ("fp32", "bf16", "fp16"):
        lm = load_model(args.model, None, "cuda", precision)
        lm.model.load_state_dict(state)  # the same random weights as the reference
        with torch.no_grad():
            img_s, img = timed(lambda lm=lm: np.concatenate([encode_images(b, lm) for b in batches]), args.repeats)
            padded_s, _ = timed(lambda lm=lm: encode_texts(texts, lm, trim=False), args.repeats)
            txt_s, txt = timed(lambda lm=lm: encode_texts(texts, lm), args.repeats)
        print(json.dumps({
            "precision": precision,
            "images_per_s": round(args.images / img_s, 1),
            "image_max_abs_diff_vs_fp32": float(np.abs(img - ref_img).max()),
            "texts_per_s": round(len(texts) / txt_s, 1),
            "open_clip_padded_texts_per_s": round(len(texts) / padded_s, 1),
            "text_speedup": round(padded_s / txt_s, 2),
            "text_max_abs_diff_vs_fp32_open_clip": float(np.abs(txt - ref_txt).max()),
            "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
