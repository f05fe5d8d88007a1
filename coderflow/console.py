"""What the command line prints: tables of rows, the metrics of a run, its UI link, and Prefect's quiet console."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.table import Table

METRIC_DIGITS = 4


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{METRIC_DIGITS}f}"
    return str(value)


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> Table:
    """A rich table of dict rows (floats rounded, None blank)."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    table = Table(title=title)
    for name in columns:
        table.add_column(name)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def print_rows(rows: Sequence[dict[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> None:
    """Print dict rows as a table on standard output."""
    from rich.console import Console

    Console().print(rows_table(rows, title, columns))


def sort_metrics(rows: Sequence[dict[str, Any]], baseline: str = "clip") -> list[dict[str, Any]]:
    """Metric rows best top-1 first, each with `vs_<baseline>` (its top-1 minus the baseline's, same shots)."""
    base = {r.get("shots"): r["top1"] for r in rows if r["method"] == baseline and r.get("top1") is not None}
    out = []
    for r in rows:
        diff = r["top1"] - base[r.get("shots")] if r.get("top1") is not None and r.get("shots") in base else None
        out.append({**r, f"vs_{baseline}": diff})
    return sorted(out, key=lambda r: (r.get("shots") or 0, -(r["top1"] if r.get("top1") is not None else -1)))


def metrics_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """A run's accuracy per method, sorted by top-1, with the difference against clip."""
    rows = sort_metrics(rows)
    columns = ["method", "top1", "vs_clip", "top5", "mean_per_class_recall", "n_samples"]
    if any(r.get("shots") is not None for r in rows):
        columns.insert(1, "shots")
    if not any(r.get("vs_clip") is not None for r in rows):
        columns.remove("vs_clip")
    return rows_table(rows, title, columns)


def bank_summary_table(summary: dict[str, dict[str, Any]], title: str, with_cost: bool = False) -> Table:
    """Per text type: kept, classes, LLM requests and tokens, and what was dropped for which reason."""
    columns = ["kept", "classes", "requests", "requested", "received", "tokens", *(["cost"] if with_cost else [])]
    rows = [
        {
            "type": kind,
            **{c: row.get(c) for c in columns},
            "dropped": ", ".join(f"{k} {v}" for k, v in row["dropped"].items()),
        }
        for kind, row in summary.items()
    ]
    return rows_table(rows, title, ["type", *columns, "dropped"])


def quiet_prefect(quiet: bool = True) -> None:
    """Prefect's console shows warnings only (its per-task INFO lines still reach the UI); `-v` shows them all."""
    level = "WARNING" if quiet else "INFO"
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = level
    if "prefect.logging" in sys.modules:  # logging already set up (a test process): adjust its console handlers
        for logger in (logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", "coderflow"))):
            for handler in logger.handlers:
                if type(handler).__name__ == "PrefectConsoleHandler":
                    handler.setLevel(level)
