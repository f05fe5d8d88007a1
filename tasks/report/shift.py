"""The distribution-shift table of a few-shot run: source accuracy, each shifted test set, their average."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from coderflow.storage.db import query, sql_file
from coderflow.storage.layout import Layout

SHIFT_NOTE = (
    "Test top-1 (mean over seeds) on the run's own test split (source) and on each shifted test set, with the support "
    "set and the hyper-parameters chosen on the source's val; each shifted set is scored over its own classes only. "
    "target average: the mean over the shifted sets."
)


def shift_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Long rows (method, shots, dataset, role, top1_mean) as one row per (method, shots): `source` (the run's own
    dataset), one column per target in order of first appearance, and `target average`."""
    table: dict[tuple[str, Any], dict[str, Any]] = {}
    targets: list[str] = []
    for r in rows:
        row = table.setdefault((r["method"], r["shots"]), {"method": r["method"], "shots": r["shots"]})
        if r["role"] == "source":
            row["source"] = r["top1_mean"]
        else:
            targets += [] if r["dataset"] in targets else [r["dataset"]]
            row[r["dataset"]] = r["top1_mean"]
    out = []
    for row in table.values():
        values = [row[t] for t in targets if row.get(t) is not None]
        complete = {"method": row["method"], "shots": row["shots"], "source": row.get("source")}
        complete |= {t: row.get(t) for t in targets}
        out.append(complete | {"target average": sum(values) / len(values) if values else None})
    return out


def shift_table(layout: Layout, run_id: str) -> list[dict[str, Any]]:
    """The shift table of a stored run (storage/sql/fewshot_shift.sql); empty for a run without shifted test sets."""
    return shift_rows(query(layout, sql_file("fewshot_shift"), {"run_id": run_id}).to_pylist())
