"""Few-shot scoring at scale: the four training-free methods of one 16-shot cell, each against its matmul floor.

Synthetic, class-structured embeddings (D=512, unit rows: a class centre plus noise, so that accuracies are neither
chance nor 1): C classes, 16 support images per class, 100 x C validation and 100 x C test queries, a CODER text bank
of 20 texts per class. Each method runs as tasks/fewshot/scorers.py runs it with the default settings
(coderflow.fewshot_sections.FewShotConfig): prototype; Tip-Adapter on its own grid (200 betas x 20 alphas, betas
first); CODER-Adapter (its initial pair, then 3 rounds of 500 betas x 50 alphas); Tip-X on IMO's grid (200 alphas x
20 betas x 50 gammas, alphas first). The zero-shot logits and class distributions every method shares are timed as
their own row.

Floor of a row = the multiply-adds of its matrix products (the affinities, CODER vectors, one cache product
exp(...) @ onehot per beta searched and one for the test set, the KL product in float64) at the matmul rate measured
in this process on this device immediately before the row (one large fp32 and, for Tip-X, fp64 matmul). The
element-wise work of a search (the exp, the alpha broadcast, the argmax) is not in the floor. Target: every row
within 3x of its floor. Each row runs `--repeats` times (default 2) and its seconds are the best run's: the first
run also pays the process's first use of its memory, which the header measures (`host_memory_ms_per_mb`: fresh
against reused; on this project's 2-core VM 3-5 ms/MB fresh, 0.25 reused). Every run is printed. The last line is
`worst x floor: R`.

    python benchmarks/fewshot_scale.py                       # 100 classes on the CPU
    python benchmarks/fewshot_scale.py --classes 1000 --device cuda
    python benchmarks/fewshot_scale.py --tiny --check        # CI size; picks compared with the numpy reference
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import print_header, result_line

from coderflow.fewshot_sections import FewShotConfig
from coderflow.tasks.fewshot import methods as fm
from coderflow.tasks.fewshot import reference_numpy as ref

TARGET = 3.0


def matmul_flops(device: str, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """FLOP/s of one n x n matmul on the device (best of `repeats`, TF32 off)."""
    torch.set_float32_matmul_precision("highest")
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / min(timed(lambda: a @ b, device) for _ in range(repeats + 1))


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds of one call of fn, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def touch_ms_per_mb(mb: int = 128) -> tuple[float, float]:
    """Milliseconds per MB to allocate and first write host memory: fresh (the process has not used it) and reused
    (the same size again right after freeing it). On a VM whose host backs guest memory lazily the first is many
    times the second; that cost falls on a row's first run, which allocates its arrays."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        a = np.ones(mb << 18, dtype=np.float32)
        times.append((time.perf_counter() - start) * 1000 / mb)
        del a
    return times[0], times[1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def synthetic(classes: int, shots: int, per_class: int, dim: int, texts: int, seed: int = 0) -> dict[str, Any]:
    """Unit embeddings around random class centres; noise chosen so that zero-shot top-1 is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    centres = ref.l2_normalize(rng.normal(size=(classes, dim)))

    def around(labels: np.ndarray, noise: float) -> np.ndarray:
        return ref.l2_normalize(centres[labels] + noise * rng.normal(size=(len(labels), dim)) / np.sqrt(dim))

    ys = np.repeat(np.arange(classes), shots)
    yv, yt = rng.integers(0, classes, per_class * classes), rng.integers(0, classes, per_class * classes)
    return {
        "support": around(ys, 5.0), "ys": ys, "val": around(yv, 5.0), "yv": yv, "test": around(yt, 5.0), "yt": yt,
        "w": around(np.arange(classes), 2.0), "t_coder": around(np.repeat(np.arange(classes), texts), 3.0),
    }  # fmt: skip


def run(args: argparse.Namespace) -> float:
    dev, cfg = args.device, FewShotConfig()
    d = synthetic(args.classes, args.shots, args.per_class, args.dim, args.texts)
    n, s, c, dim, t = len(d["yv"]), len(d["ys"]), args.classes, args.dim, len(d["t_coder"])
    onehot = fm.one_hot(d["ys"], c)
    shared: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    tip_betas, tip_alphas = fm.tip_grid(cfg.tip_search_scale, cfg.tip_search_steps)
    (b_steps, a_steps), rounds = cfg.coder_search_steps, cfg.coder_search_rounds

    def zero_shot() -> None:
        shared["zs_val"], shared["zs_test"] = (fm.zero_shot_logits(d[k], d["w"], device=dev) for k in ("val", "test"))
        for k in ("val", "test", "support"):
            shared[k] = fm.class_distribution(d[k], d["w"], cfg.kl_temperature, device=dev)

    def prototype() -> None:
        logits = fm.prototype_logits(d["test"], d["support"], d["ys"], c, device=dev)
        chosen["prototype"] = float((logits.argmax(1) == d["yt"]).mean())

    def tip_adapter() -> None:
        aff_val, aff_test = (fm.tip_affinity(d[k], d["support"], device=dev) for k in ("val", "test"))
        best = fm.tune_alpha_beta(
            shared["zs_val"], aff_val, d["ys"], d["yv"], alphas=tip_alphas, betas=tip_betas, device=dev
        )
        scores = shared["zs_test"] + best.alpha * fm.cache_logits(aff_test, onehot, best.beta, device=dev)
        chosen["tip_adapter"] = (best, float((scores.argmax(1) == d["yt"]).mean()), aff_val)

    def coder_adapter() -> None:
        keys = fm.l2_normalize(fm.l2_normalize(d["support"]) @ d["t_coder"].T)
        aff_val, aff_test = (
            fm.coder_affinity(fm.l2_normalize(d[k] @ d["t_coder"].T), keys, device=dev) for k in ("val", "test")
        )
        labels = (d["ys"], d["yv"])
        init = fm.tune_alpha_beta(shared["zs_val"], aff_val, *labels, mode="fixed", alpha=1.0, beta=1.0, device=dev)
        best = fm.coder_adapter_search(shared["zs_val"], aff_val, *labels, steps=(b_steps, a_steps), device=dev)
        best = init if init.val_accuracy > best.val_accuracy else best
        scores = shared["zs_test"] + best.alpha * fm.cache_logits(aff_test, onehot, best.beta, device=dev)
        chosen["coder_adapter"] = (best, float((scores.argmax(1) == d["yt"]).mean()), aff_val)

    def tip_x() -> None:
        aff_val, aff_test = (fm.tip_affinity(d[k], d["support"], device=dev) for k in ("val", "test"))
        kl_val = fm.tip_x_kl_logits(shared["val"], shared["support"], aff_val, onehot, device=dev)
        kl_test = fm.tip_x_kl_logits(shared["test"], shared["support"], aff_test, onehot, device=dev)
        best = fm.tune_alpha_beta(
            shared["zs_val"], aff_val, d["ys"], d["yv"], alphas=fm.IMO_ALPHAS, betas=fm.IMO_BETAS, val_kl=kl_val,
            gammas=fm.IMO_GAMMAS, order="alpha_first", device=dev,
        )  # fmt: skip
        scores = fm.tip_x_logits(shared["zs_test"], aff_test, kl_test, d["ys"], best.alpha, best.beta, best.gamma)
        chosen["tip_x"] = (best, float((scores.argmax(1) == d["yt"]).mean()), (aff_val, kl_val))

    cache = n * s * c  # one cache product exp(...) @ onehot over the validation (or test) queries
    rows: list[tuple[str, Callable[[], None], float, float]] = [  # name, run, fp32 multiply-adds, fp64 multiply-adds
        ("shared: zero-shot + class distributions", zero_shot, (4 * n + s) * c * dim, 0),
        ("prototype", prototype, c * s * dim + n * c * dim, 0),
        ("tip_adapter", tip_adapter, 2 * n * s * dim + (len(tip_betas) + 1) * cache, 0),
        ("coder_adapter", coder_adapter, (2 * n + s) * dim * t + 2 * n * s * t + (rounds * b_steps + 2) * cache, 0),
        ("tip_x", tip_x, 2 * n * s * dim + (len(fm.IMO_BETAS) + 3) * cache, 2 * n * c * s),
    ]
    worst = 0.0
    for name, fn, macs32, macs64 in rows:
        size = args.matmul_size
        floor = 2 * macs32 / matmul_flops(dev, torch.float32, size)
        floor += 2 * macs64 / matmul_flops(dev, torch.float64, size) if macs64 else 0.0
        runs = [timed(fn, dev) for _ in range(args.repeats)]
        seconds = min(runs)
        ratio = seconds / floor
        worst = max(worst, ratio)
        print(f"{name}: {seconds:.3f} s (best of {', '.join(f'{r:.3f}' for r in runs)}), floor {floor:.3f} s "
              f"({macs32 + macs64:.3g} multiply-adds), {ratio:.2f}x")  # fmt: skip
        result_line(f"fewshot {name} ({c} classes, {dev})", f"{seconds:.3f} s", f"floor {floor:.3f} s",
                    f"{ratio:.2f}x", f"<= {TARGET:g}x", ratio <= TARGET)  # fmt: skip
    for name in ("tip_adapter", "coder_adapter", "tip_x"):
        best, test_acc, _ = chosen[name]
        print(f"{name}: alpha {best.alpha:.4g} beta {best.beta:.4g} gamma {best.gamma:.4g}, val {best.val_accuracy:.4f}, "
              f"test {test_acc:.4f}")  # fmt: skip
    zs_acc = float((shared["zs_test"].argmax(1) == d["yt"]).mean())
    print(f"zero-shot test {zs_acc:.4f}, prototype test {chosen['prototype']:.4f}")
    if args.check:
        check(chosen, shared, d, (tip_betas, tip_alphas), (b_steps, a_steps))
    return worst


def check(chosen: dict[str, Any], shared: dict[str, Any], d: dict[str, Any], tip: tuple, coder: tuple) -> None:
    """The numpy reference on the same validation arrays: the same picks."""
    val = (shared["zs_val"],)
    labels = (d["ys"], d["yv"])
    (tb, ta), (aff_tip, _) = tip, (chosen["tip_adapter"][2], None)
    want = {
        "tip_adapter": ref.tune_alpha_beta(*val, aff_tip, *labels, alphas=ta, betas=tb),
        "coder_adapter": ref.coder_adapter_search(*val, chosen["coder_adapter"][2], *labels, steps=coder),
    }
    aff_val, kl_val = chosen["tip_x"][2]
    want["tip_x"] = ref.tune_alpha_beta(
        *val, aff_val, *labels, alphas=fm.IMO_ALPHAS, betas=fm.IMO_BETAS, val_kl=kl_val, gammas=fm.IMO_GAMMAS,
        order="alpha_first",
    )  # fmt: skip
    init = ref.tune_alpha_beta(*val, chosen["coder_adapter"][2], *labels, mode="fixed", alpha=1.0, beta=1.0)
    if init.val_accuracy > want["coder_adapter"].val_accuracy:
        want["coder_adapter"] = init
    for name, w in want.items():
        got = chosen[name][0]
        same = (got.alpha, got.beta, got.gamma, got.val_accuracy) == (w.alpha, w.beta, w.gamma, w.val_accuracy)
        print(f"check {name}: picks equal the numpy reference: {'yes' if same else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=100, help="classes C (support 16 x C, val and test 100 x C each)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tiny", action="store_true", help="CI size: 5 classes, 10 queries per class, D=32")
    p.add_argument("--check", action="store_true", help="also run the numpy reference and compare the picks")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--per-class", type=int, default=100, help="validation (and test) queries per class")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--texts", type=int, default=20, help="CODER texts per class")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, the core count)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each row; its seconds are the best (default 2)")
    p.add_argument("--matmul-size", type=int, default=0, help="n of the n x n matmul timing the rate (0: by device)")
    args = p.parse_args()
    if args.tiny:
        args.classes, args.per_class, args.dim, args.texts = 5, 10, 32, 4
    if not args.matmul_size:
        args.matmul_size = 256 if args.tiny else 8192 if args.device.startswith("cuda") else 2048
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: run each row at least once; use --repeats 1 or more")
    fresh, reused = touch_ms_per_mb()
    params = {
        **vars(args),
        "torch_threads": torch.get_num_threads(),
        "host_memory_ms_per_mb": f"{fresh:.2f} fresh, {reused:.2f} reused",
    }
    if args.device.startswith("cuda"):
        params["gpu"] = torch.cuda.get_device_name()
    print_header("few-shot scoring at scale", params, ("torch", "numpy"))
    worst = run(args)
    print(f"worst x floor: {worst:.2f}")


if __name__ == "__main__":
    main()
