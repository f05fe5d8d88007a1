"""Shared helpers of the benchmarks: timing statistics, machine description, peak memory, result lines."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """What the figures were measured on (CPU count, memory, load, library versions)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["ram_gb"] = round(pages * page / 2**30, 1)
    except (ValueError, OSError):
        pass
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    info["loadavg_at_start"] = tuple(round(x, 2) for x in os.getloadavg())
    return info


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "-"
    return out


def print_header(title: str, params: dict[str, Any], libs: tuple[str, ...] = ()) -> None:
    print(f"=== {title} ===")
    for k, v in {**machine(), **params}.items():
        print(f"  {k}: {v}")
    if libs:
        print("  versions: " + ", ".join(f"{k} {v}" for k, v in versions(*libs).items()))
    sys.stdout.flush()


class Timings:
    """Wall-clock samples of one measured thing; median, min and max."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[float] = []

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    def time(self, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        self.add(time.perf_counter() - start)
        return out

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def summary(self, unit: str = "s", scale: float = 1.0) -> str:
        s = [x * scale for x in self.samples]
        return f"median {statistics.median(s):.4g} {unit} (min {min(s):.4g}, max {max(s):.4g}, n={len(s)})"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def result_line(name: str, coderflow: str, baseline: str, ratio: str, target: str, ok: bool | None) -> None:
    """One machine-greppable line per figure: RESULT | benchmark | coderflow | baseline | ratio | target | met."""
    met = "-" if ok is None else verdict(ok)
    print(f"RESULT | {name} | {coderflow} | {baseline} | {ratio} | {target} | {met}")
    sys.stdout.flush()


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of one n x n matmul in this process: the unit of every floor and utilisation figure."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (torch's FlopCounterMode: matmuls and convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()
