"""What a suite costs over running its cells one by one: `coderflow suite -c` against one `coderflow run` per cell.

Both sides start from an empty work directory and compute the same cells (demo datasets x one offline bank x the
zero-shot methods, random weights): the suite in one process (one Prefect server, the cells as sub-flows), the cells
as separate `coderflow run` processes. Target: the suite takes no more than 5% plus a few seconds over the runs'
total. A second suite run, every cell answered from stored results, is timed too.

    python benchmarks/suite_overhead.py                      # 2 datasets, 20 images per class
    python benchmarks/suite_overhead.py --datasets 3 --images-per-class 40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_header, result_line

CLI = str(Path(sys.executable).with_name("coderflow"))
FIXED_S = 5.0  # the "few seconds" of the target
SHARE = 0.05


def _timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([CLI, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"coderflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=int, default=2)
    ap.add_argument("--images-per-class", type=int, default=20)
    ap.add_argument("--methods", default="clip,coder,coder_rerank")
    args = ap.parse_args()
    print_header("suite overhead", vars(args))
    methods = args.methods.split(",")
    datasets = [
        {"name": f"demo{i}", "kind": "demo", "demo_images_per_class": args.images_per_class, "seed": i}
        for i in range(args.datasets)
    ]
    base = {"model": {"batch_size": 32}, "texts": {"types": ["name", "att"]}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suite = {**base, "workdir": str(root / "suite"), "suite": {
            "name": "overhead", "datasets": datasets, "models": [{"name": "ViT-S-32-alt"}], "banks": ["offline"],
            "methods": methods,
        }}  # fmt: skip
        (root / "suite.yaml").write_text(json.dumps(suite))  # JSON is YAML
        one_by_one = []
        for ds in datasets:
            flags = ["run", "--workdir", root / "runs", "--dataset.name", ds["name"], "--kind", "demo"]
            flags += ["--dataset.demo-images-per-class", ds["demo_images_per_class"], "--dataset.seed", ds["seed"]]
            flags += ["--model.batch-size", 32, "--texts.types", "name,att", "--methods", ",".join(methods)]
            one_by_one.append(_timed([str(f) for f in flags]))
            print(f"  coderflow run {ds['name']}: {one_by_one[-1]:.1f} s", flush=True)
        suite_s = _timed(["suite", "-c", str(root / "suite.yaml")])
        print(f"  coderflow suite ({len(datasets)} cells): {suite_s:.1f} s", flush=True)
        again_s = _timed(["suite", "-c", str(root / "suite.yaml")])
        print(f"  coderflow suite again (every cell stored): {again_s:.1f} s", flush=True)
    total = sum(one_by_one)
    limit = total * (1 + SHARE) + FIXED_S
    result_line(
        f"suite of {len(datasets)} cells vs the cells one by one", f"{suite_s:.1f} s", f"{total:.1f} s",
        f"{suite_s / total:.2f}x", f"<= {1 + SHARE:.2f}x + {FIXED_S:.0f} s", suite_s <= limit,
    )  # fmt: skip


if __name__ == "__main__":
    main()
