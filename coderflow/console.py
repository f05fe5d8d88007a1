"""What the command line prints: tables of rows, the metrics of a run, its UI link, and Prefect's quiet console."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Group
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


def is_id_column(name: str) -> bool:
    """Columns of identifiers (run_id, model_id, flow_run, adapter): shown whole, never cut to `20261…`."""
    return name in ("id", "flow_run", "adapter", "checkpoint") or name.endswith(("_id", "_ids"))


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> Table:
    """A rich table of dict rows (floats rounded, None blank, control characters escaped, no markup). No cell is cut
    with an ellipsis: long cells fold onto more lines, id columns never wrap (print_rows shows a table too wide for
    the terminal as records)."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    table = Table(title=None if title is None else Text(printable(title), style="table.title"))
    for name in columns:
        whole = {"no_wrap": True} if is_id_column(str(name)) else {}
        table.add_column(Text(printable(str(name))), overflow="fold", **whole)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def rows_records(
    rows: Sequence[dict[str, Any]], title: str | None = None, columns: Sequence[str] | None = None
) -> Group:
    """Rows too wide for the terminal as records: one `column  value` line per cell, a blank line between rows; a
    value longer than the line folds onto the next, never cut."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    parts: list[Any] = [Text(printable(title), style="table.title")] if title is not None else []
    for row in rows:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for name in columns:
            grid.add_row(Text(printable(str(name))), _cell(row.get(name)))
        parts += [Text(""), grid]
    return Group(*parts)


def _tsv_cell(value: Any) -> str:
    text = _cell(value).plain
    return text.replace("\t", "\\t").replace("\n", "\\n")  # printable() escaped the other controls


def rows_tsv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Dict rows as tab-separated lines under a header line: whole values (tab and newline written as \\t and \\n,
    control characters escaped), floats rounded as in the table, None empty."""
    columns = list(columns or (rows[0].keys() if rows else ()))
    lines = ["\t".join(_tsv_cell(str(c)) for c in columns)]
    lines += ["\t".join(_tsv_cell(r.get(c)) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def print_rows(rows: Sequence[dict[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> None:
    """Print dict rows on standard output: a table on a terminal; piped or redirected, tab-separated lines with a
    header (cut, sort, awk read them; nothing is cut to the width) and the title on standard error."""
    from rich.console import Console

    out = Console()
    if out.is_terminal:
        table = rows_table(rows, title, columns)
        fits = out.measure(table, options=out.options.update_width(10**6)).minimum <= out.width  # ids whole
        out.print(table if fits else rows_records(rows, title, columns))
        return
    if title is not None:
        Console(stderr=True, highlight=False, soft_wrap=True).print(Text(printable(title)))
    sys.stdout.write(rows_tsv(rows, columns))
    sys.stdout.flush()


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
    for optional in ("vs_clip", "top5"):  # top5 is blank where the dataset has 5 classes or fewer
        if not any(r.get(optional) is not None for r in rows):
            columns.remove(optional)
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
