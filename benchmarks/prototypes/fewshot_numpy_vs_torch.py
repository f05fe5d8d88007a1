"""The few-shot searches before (numpy, tasks/fewshot/reference_numpy.py) and now (torch, tasks/fewshot/methods.py).

Same process, same validation arrays (benchmarks/fewshot_scale.py's synthetic cell): Tip-Adapter's 200 x 20 grid, one
CODER-Adapter round of 500 x 50, Tip-X on IMO's 200 x 20 x 50 grid; each line gives both times, the speed-up and
whether the picks are the same.

    python benchmarks/prototypes/fewshot_numpy_vs_torch.py [--classes 30 --threads 1 --device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fewshot_scale import synthetic

from coderflow.tasks.fewshot import methods as fm
from coderflow.tasks.fewshot import reference_numpy as ref


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=30, help="classes (16 shots each, 100 val queries per class)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = synthetic(args.classes, 16, 100, 512, 20)
    zs, aff = ref.zero_shot_logits(d["val"], d["w"]), ref.tip_affinity(d["val"], d["support"])
    keys = ref.l2_normalize(ref.l2_normalize(d["support"]) @ d["t_coder"].T)
    coder_aff = ref.coder_affinity(ref.l2_normalize(d["val"] @ d["t_coder"].T), keys)
    dist = [ref.class_distribution(d[k], d["w"]) for k in ("val", "support")]
    kl = ref.tip_x_kl_logits(*dist, aff, ref.one_hot(d["ys"], args.classes))
    betas, alphas = fm.tip_grid()
    labels = (d["ys"], d["yv"])
    imo = {"alphas": fm.IMO_ALPHAS, "betas": fm.IMO_BETAS, "gammas": fm.IMO_GAMMAS, "order": "alpha_first"}
    jobs = {
        "Tip-Adapter 200 x 20": lambda m, **k: m.tune_alpha_beta(zs, aff, *labels, alphas=alphas, betas=betas, **k),
        "CODER-Adapter 1 round 500 x 50": lambda m, **k: m.coder_adapter_search(zs, coder_aff, *labels, rounds=1, **k),
        "Tip-X 200 x 20 x 50": lambda m, **k: m.tune_alpha_beta(zs, aff, *labels, val_kl=kl, **imo, **k),
    }
    print(f"{args.classes} classes, {len(d['yv'])} val queries, {len(d['ys'])} support, torch on {args.device}")
    for name, job in jobs.items():
        start = time.perf_counter()
        want = job(ref)
        numpy_s = time.perf_counter() - start
        start = time.perf_counter()
        got = job(fm, device=args.device)
        torch_s = time.perf_counter() - start
        same = (want.alpha, want.beta, want.gamma, want.val_accuracy) == (
            got.alpha,
            got.beta,
            got.gamma,
            got.val_accuracy,
        )
        print(f"{name}: numpy {numpy_s:.2f} s, torch {torch_s:.2f} s, {numpy_s / torch_s:.2f}x, same pick: {same}")


if __name__ == "__main__":
    main()
