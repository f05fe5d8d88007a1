"""Report figures with matplotlib (no Prefect): per-class recall, confusion heatmap, accuracy vs shots, reliability."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from coderflow.console import printable
from coderflow.tasks.evaluate.metrics import seed_std


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: smaller, searchable, selectable
    matplotlib.rcParams["text.parse_math"] = False  # labels are plain text: a class named 'a$\\foo{$b' is no formula
    matplotlib.rcParams["text.usetex"] = False
    import matplotlib.pyplot as plt

    return plt


def render(fig: Any, fmt: str = "svg") -> bytes:
    """The figure as SVG (text, scales in a browser) or PNG bytes; the figure is closed."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return buffer.getvalue()


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> Any:
    """Axis labels, title, a small legend and a light grid: the line plots' common dressing."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def recall_bars(names: Sequence[str], recalls: Mapping[str, Sequence[float]], title: str) -> Any:
    """Grouped horizontal bars: one row per class, one bar per method (recall in [0, 1])."""
    plt = _pyplot()
    n, methods = len(names), list(recalls)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * n * max(1, len(methods)) ** 0.5), dpi=100)
    height = 0.8 / max(1, len(methods))
    y = np.arange(n)
    for i, method in enumerate(methods):
        ax.barh(y + (i - (len(methods) - 1) / 2) * height, recalls[method], height=height, label=method)
    ax.set_yticks(y, [printable(str(s))[:40] for s in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def confusion_heatmap(names: Sequence[str], counts: np.ndarray, title: str) -> Any:
    """Counts of (true row, predicted column) among the given classes, each cell annotated when the grid is small."""
    plt = _pyplot()
    k = len(names)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * k, 1.5 + 0.45 * k), dpi=100)
    im = ax.imshow(counts, cmap="Blues")
    labels = [printable(str(s))[:24] for s in names]
    ax.set_xticks(range(k), labels, rotation=60, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        top = counts.max() if counts.size else 0
        for (i, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, i, str(int(v)), ha="center", va="center", color="white" if v > top / 2 else "black",
                        fontsize=7)  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def shots_curves(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, dict[int, list[float]]], float | None]:
    """From a run's top-1 rows (method, shots, value; several seeds each): per method the values at each number of
    shots, and the zero-shot CLIP baseline (method clip, shots null; mean over its rows) or None."""
    curves: dict[str, dict[int, list[float]]] = {}
    zero = []
    for r in rows:
        if r["shots"] is not None:
            curves.setdefault(r["method"], {}).setdefault(r["shots"], []).append(r["value"])
        elif r["method"] == "clip":
            zero.append(r["value"])
    return curves, float(np.mean(zero)) if zero else None


def accuracy_vs_shots(
    curves: Mapping[str, Mapping[int, Sequence[float]]],
    title: str,
    zero_shot: float | None = None,
    chance: float | None = None,
    xlabel: str = "shots per class",
) -> Any:
    """Mean top-1 over seeds per method against shots (log2 axis; or another count named by `xlabel`, such as the
    number of classes) with the spread as error bars; the zero-shot baseline and chance level as horizontal lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    all_shots: set[int] = set()
    for method, by_shots in sorted(curves.items()):
        shots = sorted(by_shots)
        all_shots.update(shots)
        means = [float(np.mean(by_shots[k])) for k in shots]
        stds = [seed_std(by_shots[k]) or 0.0 for k in shots]
        ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, label=method)
    if zero_shot is not None:
        ax.axhline(zero_shot, color="black", linestyle="--", linewidth=1, label="zero-shot CLIP")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    if all_shots:
        ax.set_xscale("log", base=2)
        ticks = sorted(all_shots)
        ax.set_xticks(ticks, [str(k) for k in ticks])
    return _finish(fig, ax, xlabel, "top-1 accuracy (test)", title)


def reliability_diagram(bins: Mapping[str, Sequence[Mapping[str, float]]], title: str) -> Any:
    """Accuracy against mean confidence per confidence bin, one line per method, with the diagonal of perfect
    calibration (bins as from tasks.evaluate.metrics.reliability)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for method, rows in bins.items():
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=method)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return _finish(fig, ax, "confidence (mean of the bin)", "accuracy", title)
