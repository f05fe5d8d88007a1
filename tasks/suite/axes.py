"""The suite report's studies along an axis: accuracy and CODER's cost against the number of classes, and the text
banks (several LLMs, the offline generator, published files) compared on the same images (no Prefect)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.evaluate.compare import compare_runs

CLASSES_AXIS = re.compile(r"(?:^|,)classes=(\d+)(?:,|$)")
COST_SQL = (
    "SELECT c.cell_id, c.textbank_id, r.duration_s, (SELECT count(*) FROM texts t WHERE t.textbank_id = "
    "c.textbank_id) AS n_texts FROM suite_cells c LEFT JOIN runs r USING (run_id) WHERE c.suite_id = ?"
)


def class_count(axis: str | None) -> int | None:
    """K of a cell's `classes=K` axis value, else None."""
    found = CLASSES_AXIS.search(axis or "")
    return int(found.group(1)) if found else None


def scaling_curves(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[str, dict[int, list[float]]]]:
    """Zero-shot leaderboard rows of the class-count axis as curves: per (dataset, model, bank) and method, the top-1
    at each K (the dataset named without its `-c<K>` suffix)."""
    curves: dict[tuple[str, str, str], dict[str, dict[int, list[float]]]] = {}
    for r in rows:
        k = class_count(r.get("axis"))
        if k is None or r.get("shots") is not None or r.get("top1_mean") is None or r.get("kind") != "zeroshot":
            continue
        dataset = str(r["dataset"]).removesuffix(f"-c{k}")
        key = (dataset, str(r["model"]), str(r["bank"]))
        curves.setdefault(key, {}).setdefault(r["method"], {}).setdefault(k, []).append(r["top1_mean"])
    return curves


def scaling_costs(layout: Layout, suite_id: str, cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per zero-shot cell of the class-count axis: K, the bank's texts (= CODER's dimension) and the run's seconds."""
    cost = {r["cell_id"]: r for r in query(layout, COST_SQL, params=[suite_id]).to_pylist()}
    out = []
    for c in cells:
        k = class_count(c.get("axis"))
        if k is None or c["kind"] != "zeroshot" or c["status"] == "failed":
            continue
        found = cost.get(c["cell_id"], {})
        out.append({
            "dataset": c["dataset"], "model": c["model"], "bank": c["bank"], "classes": k,
            "texts (CODER dimension)": found.get("n_texts"), "texts per class": (found.get("n_texts") or 0) / k,
            "run seconds": found.get("duration_s"),
        })  # fmt: skip
    return sorted(
        out, key=lambda r: (r["dataset"].removesuffix(f"-c{r['classes']}"), r["model"], r["bank"], r["classes"])
    )


def bank_comparisons(
    layout: Layout, rows: Sequence[Mapping[str, Any]], bank_order: Sequence[str], resamples: int = 1000
) -> list[dict[str, Any]]:
    """Each zero-shot method of each dataset and model with every other bank against the first bank (in the suite's
    order), paired on the same test images (tasks/evaluate/compare.py: bootstrap interval, exact McNemar)."""
    by: dict[tuple[str, str, str, str], dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("shots") is None and r.get("kind") == "zeroshot" and r.get("top1_mean") is not None:
            by.setdefault((r["dataset"], str(r["model"]), str(r.get("axis") or ""), r["method"]), {})[r["bank"]] = r
    rank = {b: i for i, b in enumerate(bank_order)}
    out = []
    for (dataset, model, axis, method), banks in sorted(by.items()):
        if len(banks) < 2:
            continue
        base, *others = sorted(banks, key=lambda b: (rank.get(b, len(rank)), b))
        for other in others:
            a, b = banks[other], banks[base]
            (c,) = [x for x in compare_runs(layout, a["run_id"], [method], b["run_id"], [method], resamples)
                    if x["shots"] is None and x["class_index"] is None]  # fmt: skip
            out.append({
                "dataset": dataset, "model": model, "axis": axis or None, "method": method, "bank": other,
                "against": base, "top1": c["accuracy_a"], "top1 against": c["accuracy_b"],
                "difference": c["difference"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                "p_value": c["p_value"], "n": c["n"],
            })  # fmt: skip
    return out
