"""The regression watch of a suite run: cells whose top-1 fell below the previous run of the same suite by more than
the 95% interval of the new figure (no Prefect)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from coderflow.storage.db import query
from coderflow.storage.layout import Layout

Z95 = 1.959964  # two-sided 95% normal quantile
KEY = ("cell_id", "method", "shots")
PREVIOUS_SQL = (
    "SELECT suite_id FROM suite_cells WHERE suite_name = (SELECT any_value(suite_name) FROM suite_cells "
    "WHERE suite_id = ?) GROUP BY suite_id HAVING min(started_at) < (SELECT min(started_at) FROM suite_cells "
    "WHERE suite_id = ?) ORDER BY min(started_at) DESC LIMIT 1"
)


def half_width(row: Mapping[str, Any]) -> float | None:
    """The 95% half-width of a leaderboard row's top-1: the binomial one over its test images, or, with several seeds,
    that of the mean over seeds (std / sqrt(seeds)) when larger; None without figures."""
    p, n = row.get("top1_mean"), row.get("n_samples")
    if p is None or not n:
        return None
    width = Z95 * math.sqrt(max(p * (1 - p), 0.0) / n)
    std, seeds = row.get("top1_std"), row.get("n_seeds") or 1
    if std is not None and seeds > 1:
        width = max(width, Z95 * std / math.sqrt(seeds))
    return width


def regressions(previous: Iterable[Mapping[str, Any]], current: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The (cell, method, shots) rows of `current` whose top-1 is below `previous`'s by more than their 95%
    half-width, worst first; cells and methods in only one of them are not compared."""
    before = {tuple(r[k] for k in KEY): r for r in previous if r.get("top1_mean") is not None}
    out = []
    for row in current:
        old = before.get(tuple(row[k] for k in KEY))
        width = half_width(row)
        if old is None or width is None:
            continue
        drop = old["top1_mean"] - row["top1_mean"]
        if drop > width:
            out.append({
                "dataset": row["dataset"], "model_id": row["model_id"], "textbank_id": row["textbank_id"],
                "method": row["method"], "shots": row["shots"], "before": old["top1_mean"],
                "now": row["top1_mean"], "drop": drop, "interval": width, "run_before": old["run_id"],
                "run_now": row["run_id"],
            })  # fmt: skip
    return sorted(out, key=lambda r: -r["drop"])


def suite_regressions(layout: Layout, suite_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The previous run of the same suite (by name) and the cells that got worse since, from the leaderboard."""
    found = query(layout, PREVIOUS_SQL, params=[suite_id, suite_id]).to_pylist()
    if not found:
        return None, []
    previous = found[0]["suite_id"]
    rows = {
        sid: query(layout, "SELECT * FROM leaderboard WHERE suite_id = ?", params=[sid]).to_pylist()
        for sid in (previous, suite_id)
    }
    return previous, regressions(rows[previous], rows[suite_id])
