"""What the command line prints: tables of rows, the metrics of a run, its UI link, and Prefect's quiet console."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

METRIC_DIGITS = 4

# what a terminal acts on instead of showing: C0 controls but tab and newline (ESC starts OSC 52 clipboard writes,
# titles, screen clears), DEL, C1 controls (0x9b is an 8-bit CSI) and the bidi controls that reorder a line
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Outside text (LLM replies, class names, query results) safe to print: each control character a terminal would
    act on is shown as an escape (ESC as the four characters \\x1b, U+202E as \\u202e); tab and newline are kept."""
    return _CONTROL.sub(_escape, text)


def printable_table(table: Any) -> Any:
    """A pyarrow table with printable() applied to its column names and string values (CSV on standard output)."""
    import pyarrow as pa

    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pa.array([None if v is None else printable(v) for v in column.to_pylist()], column.type)
        columns.append(column)
    return pa.table(columns, names=[printable(n) for n in table.column_names])


def _cell(value: Any) -> Text:
    if value is None:
        return Text("")
    if isinstance(value, float):
        return Text(f"{value:.{METRIC_DIGITS}f}")
    return Text(printable(str(value)))  # Text: a '[' in a class name is not rich markup


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> Table:
    """A rich table of dict rows (floats rounded, None blank, control characters escaped, no markup)."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    table = Table(title=None if title is None else Text(printable(title), style="table.title"))
    for name in columns:
        table.add_column(Text(printable(str(name))))
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
