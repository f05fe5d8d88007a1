"""`coderflow demo` end to end: wall time and peak RSS of the first run and of a re-run of the unchanged demo.

Each run is a child process (`coderflow demo --workdir W`, same W every time) with its own PREFECT_HOME, so a run
that starts the pipeline starts the ephemeral Prefect server (a fixed cost, measured below with a trivial flow).
An unchanged re-run is answered by the CLI's up-to-date check (flows/uptodate.py: no torch, no Prefect); a last
`--force` re-run shows, for information, what running the cached pipeline through Prefect costs. Peak RSS comes from
os.wait4's rusage (the largest of the process and its waited-for children, i.e. the ephemeral server too).
Runs that start Prefect are broken down by flow and task from the Prefect database they wrote (start/end times).
Target: re-run < 10% of the first run's wall time.

Small splits (`--small-split 40,160,480`): the embedding stage of a split of N photo-like JPEGs (500x375), each
measured in a fresh process so that starting decode workers is paid as in a first run: as the embedding task decides
(`decode_workers(None, N)`: threads below MIN_IMAGES_FOR_WORKERS or on 2 cores), with worker processes forced (one per core), and
the model alone on the already-decoded images. Target: the stage within 2x its model time + 2 s.

    python benchmarks/end_to_end.py                       # 20 images per class (the demo's default)
    python benchmarks/end_to_end.py --images-per-class 100 --reruns 2
    python benchmarks/end_to_end.py --small-split 40,160,480 --only-small-split
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from _common import print_header, result_line

COLD_IMPORT = "import coderflow.cli, coderflow.flows.pipeline"
CHECK_IMPORT = "import coderflow.cli, coderflow.flows.uptodate"  # what an up-to-date re-run imports
TRIVIAL_FLOW = "import coderflow\nfrom prefect import flow\n@flow\ndef noop(): return 1\nnoop()\n"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS MiB (process tree, from wait4), exit code, output tail."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode, out[-4000:]


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def breakdown(prefect_home: Path, since: datetime) -> list[tuple[str, float, int]]:
    """(name, seconds, count) of the flow and task runs that started after `since`, largest first."""
    db = prefect_home / "prefect.db"
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT 'flow ' || f.name, r.start_time, r.end_time FROM flow_run r JOIN flow f ON f.id = r.flow_id "
        "UNION ALL SELECT 'task ' || t.task_key, t.start_time, t.end_time FROM task_run t"
    ).fetchall()
    con.close()
    agg: dict[str, list[float]] = defaultdict(list)
    for name, start, end in rows:
        s, e = _ts(start), _ts(end)
        if s is None or e is None or s.replace(tzinfo=None) < since:
            continue
        base = name.rsplit("-", 1)[0] if name.startswith("task ") else name
        agg[base].append((e - s).total_seconds())
    return sorted(((k, sum(v), len(v)) for k, v in agg.items()), key=lambda r: -r[1])


def first_flow_start(prefect_home: Path, since: datetime) -> datetime | None:
    if not (prefect_home / "prefect.db").exists():  # nothing started Prefect (an up-to-date re-run)
        return None
    con = sqlite3.connect(prefect_home / "prefect.db")
    starts = [_ts(s) for (s,) in con.execute("SELECT start_time FROM flow_run WHERE start_time IS NOT NULL")]
    con.close()
    starts = [s.replace(tzinfo=None) for s in starts if s and s.replace(tzinfo=None) >= since]
    return min(starts) if starts else None


def embed_child(mode: str, n: int, repeats: int) -> dict[str, float]:
    """In a fresh process: seconds to embed `n` JPEGs with the decode workers `mode` gives ('auto': as embed_shard
    decides, 'workers': one per core), and the model's seconds alone on the same images decoded beforehand."""
    import torch
    from decode_images import photo_like_jpegs

    from coderflow.config import ModelConfig
    from coderflow.tasks.embed.encode import decode_image, decode_workers, embed_samples, encode_images
    from coderflow.tasks.embed.model import load_configured

    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        lm = load_configured(ModelConfig(name="ViT-S-32-alt", pretrained=None, batch_size=64), tmp)
    samples = [{"__key__": f"k{i:05d}", "jpg": b, "cls": 0} for i, b in enumerate(photo_like_jpegs(n))]
    workers = decode_workers(None, n) if mode == "auto" else decode_workers()
    start = time.perf_counter()
    table = embed_samples(samples, lm, 64, {}, workers=workers)  # the first: a worker start is paid here
    stage = time.perf_counter() - start
    assert table.num_rows == n
    images = torch.stack([lm.preprocess(decode_image(s["jpg"])) for s in samples])
    model = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n, 64):
            encode_images(images[i : i + 64], lm)
        model = min(model, time.perf_counter() - start)
    return {"stage": stage, "model": model, "workers": workers}


def small_splits(sizes: list[int], repeats: int) -> None:
    """The embedding stage of small splits against the model's own time (see the module docstring)."""
    from coderflow.tasks.embed.encode import MIN_IMAGES_FOR_WORKERS

    print(f"  small splits: decode workers from {MIN_IMAGES_FOR_WORKERS} images on more than 2 cores; fresh processes")
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    for n in sizes:
        got = {}
        for mode in ("auto", "workers"):
            times = []
            for _ in range(repeats):
                cmd = [sys.executable, __file__, "--embed-child", mode, str(n)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                times.append(json.loads(out.splitlines()[-1]))
            got[mode] = min(times, key=lambda t: t["stage"])
        model = min(got["auto"]["model"], got["workers"]["model"])
        auto, forced = got["auto"], got["workers"]
        print(
            f"  {n} images: stage {auto['stage']:.1f} s with {auto['workers']} decode workers (as embed_shard), "
            f"{forced['stage']:.1f} s with {forced['workers']} worker processes, model alone {model:.1f} s"
        )
        bound = 2 * model + 2.0
        result_line(
            f"end_to_end small split {n} images: embedding stage / (2 x model + 2 s)",
            f"{auto['stage']:.1f} s",
            f"{bound:.1f} s",
            f"{auto['stage'] / bound:.2f}",
            "<= 1",
            auto["stage"] <= bound,
        )
        result_line(
            f"end_to_end small split {n} images: with worker processes (info)",
            f"{forced['stage']:.1f} s",
            f"{auto['stage']:.1f} s",
            f"{forced['stage'] / auto['stage']:.2f}",
            "-",
            None,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-split", default="40,160,480", help="split sizes of the small-split measurement ('' skips)")
    ap.add_argument("--only-small-split", action="store_true", help="only the small-split measurement")
    ap.add_argument("--small-repeats", type=int, default=1, help="fresh processes per small-split figure (min kept)")
    ap.add_argument("--embed-child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--images-per-class", type=int, default=20, help="demo images per class (10 classes)")
    ap.add_argument("--reruns", type=int, default=1, help="re-runs of the unchanged demo")
    ap.add_argument("--no-force", action="store_true", help="skip the final `--force` re-run (information only)")
    ap.add_argument("--trivial-repeats", type=int, default=2, help="repeats of the import / trivial-flow costs")
    args = ap.parse_args()
    if args.embed_child:
        print(json.dumps(embed_child(args.embed_child[0], int(args.embed_child[1]), 2)))
        return
    exe = Path(sys.executable).with_name("coderflow")
    print_header(
        "end_to_end",
        {
            "command": f"coderflow demo --dataset.demo-images-per-class {args.images_per_class} --workdir W",
            "model": "ViT-S-32-alt (random weights, pretrained=None; demo default)",
            "torch_threads": "torch default (= cores)",
            "images": args.images_per_class * 10,
            "image_size": "64px (demo default), 224px model input",
        },
        ("torch", "prefect", "duckdb"),
    )
    sizes = [int(n) for n in args.small_split.split(",") if n.strip()]
    if sizes:
        small_splits(sizes, args.small_repeats)
    if args.only_small_split:
        return
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
        # fixed costs: imports, and a trivial flow (ephemeral server start-up) with a fresh PREFECT_HOME
        for i in range(args.trivial_repeats):
            wall, rss, rc, _ = run([sys.executable, "-c", COLD_IMPORT], env)
            print(f"  fixed cost: import coderflow CLI + flows: {wall:.1f} s, peak RSS {rss:.0f} MiB")
            wall, rss, rc, _ = run([sys.executable, "-c", CHECK_IMPORT], env)
            print(f"  fixed cost: import coderflow CLI + up-to-date check: {wall:.1f} s, peak RSS {rss:.0f} MiB")
            home = tmp / f"home-trivial-{i}"
            wall, rss, rc, out = run([sys.executable, "-c", TRIVIAL_FLOW], {**env, "PREFECT_HOME": str(home)})
            print(f"  fixed cost: python + trivial @flow (starts the ephemeral server): {wall:.1f} s (rc {rc})")
        work = tmp / "work"
        walls = []
        forced = None
        for i in range(1 + args.reruns + (0 if args.no_force else 1)):
            home = tmp / f"home-{i}"
            since = datetime.utcnow()
            cmd = [
                str(exe),
                "demo",
                "--workdir",
                str(work),
                "--dataset.demo-images-per-class",
                str(args.images_per_class),
            ]
            force = i == 1 + args.reruns
            wall, rss, rc, out = run(cmd + ["--force"] * force, {**env, "PREFECT_HOME": str(home)})
            label = "first run" if i == 0 else "--force re-run" if force else f"re-run {i}"
            if force:
                forced = wall
            else:
                walls.append(wall)
            skipped = " (up to date: pipeline not started)" if "up to date: run" in out else ""
            print(f"  {label}: {wall:.1f} s wall, peak RSS {rss:.0f} MiB, rc {rc}{skipped}")
            if rc:
                print(out)
                raise SystemExit(rc)
            first = first_flow_start(home, since)
            if first:
                print(f"    process start -> first flow run starts: {(first - since).total_seconds():.1f} s")
            for name, seconds, count in breakdown(home, since)[:14]:
                print(f"    {name:40s} {seconds:7.2f} s  ({count} run{'s' if count > 1 else ''})")
            result_line(f"end_to_end {label} wall", f"{wall:.1f} s", "-", "-", "-", None)
            result_line(f"end_to_end {label} peak RSS", f"{rss:.0f} MiB", "-", "-", "-", None)
        ratio = min(walls[1:]) / walls[0]
        result_line(
            "end_to_end re-run / first run",
            f"{min(walls[1:]):.1f} s",
            f"{walls[0]:.1f} s",
            f"{ratio:.1%}",
            "< 10%",
            ratio < 0.1,
        )
        if forced is not None:
            result_line(
                "end_to_end --force re-run / first run (info)",
                f"{forced:.1f} s",
                f"{walls[0]:.1f} s",
                f"{forced / walls[0]:.1%}",
                "-",
                None,
            )


if __name__ == "__main__":
    main()
