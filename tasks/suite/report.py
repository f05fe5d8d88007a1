"""`coderflow suite report`: a suite's results in the papers' layout, as Markdown, HTML or CSV text (no Prefect)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.evaluate.reference import reference_key
from coderflow.tasks.report import plots
from coderflow.tasks.report.document import Figure, Section, to_html, to_markdown
from coderflow.tasks.suite.axes import bank_comparisons, scaling_costs, scaling_curves
from coderflow.tasks.suite.stats import benchmark_csv, benchmark_rows, suite_cells
from coderflow.tasks.suite.studies import RERANK_COLUMNS, bank_study, rerank_study

SUITE_REPORT_FORMATS = ("md", "html", "csv")
SIGNIFICANT = 0.05  # a difference from clip with p below this is marked
MARKER = "*"
FAILED = "failed"

ROWS_SQL = """
SELECT l.*, c.model, c.bank, c.axis, c.kind
FROM leaderboard l JOIN suite_cells c USING (suite_id, cell_id)
WHERE l.suite_id = ?
"""


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def cell_text(row: Mapping[str, Any], reference: float | None = None) -> str:
    """One table cell: top-1 in percent, `± std` over seeds (several seeds), MARKER where the paired difference from
    clip has p < SIGNIFICANT, and the published number in brackets where the reference table has one."""
    if row.get("status") == FAILED:
        return FAILED
    text = _pct(row["top1_mean"])
    if row.get("top1_std") is not None and (row.get("n_seeds") or 0) > 1:
        text += f" ± {_pct(row['top1_std'])}"
    if row.get("p_value") is not None and row["p_value"] < SIGNIFICANT:
        text += MARKER
    if reference is not None:
        text += f" (paper {_pct(reference)})"
    return text


def _references(layout: Layout, rows: Sequence[Mapping[str, Any]]) -> dict[tuple, float]:
    """(run_id, method, shots) -> the published top-1 of the run's dataset, backbone and weights."""
    refs: dict[tuple, float] = {}
    for r in query(layout, "SELECT * FROM reference_results WHERE metric = 'top1'").to_pylist():
        refs.setdefault((r["dataset"], r["backbone"], r["pretrained"], r["method"], r["shots"]), r["value"])
    run_ids = sorted({r["run_id"] for r in rows if r.get("run_id")})
    configs = query(layout, "SELECT run_id, config FROM runs WHERE list_contains(?, run_id)", params=[run_ids])
    keys = {c["run_id"]: reference_key(json.loads(c["config"] or "{}")) for c in configs.to_pylist()}
    out = {}
    for r in rows:
        key = keys.get(r.get("run_id"))
        if key is not None and (*key, r["method"], r["shots"]) in refs:
            out[(r["run_id"], r["method"], r["shots"])] = refs[(*key, r["method"], r["shots"])]
    return out


def result_tables(rows: Sequence[Mapping[str, Any]], references: Mapping[tuple, float]) -> list[Section]:
    """One section per model, bank, study axis and shots (zero-shot first): methods as rows (clip first), datasets
    as columns and an Average column (the mean over datasets, where the method has all of them)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        shots = r["shots"] if r["status"] != FAILED else (None if r["kind"] != "fewshot" else "fewshot")
        groups.setdefault((r["model"] or "", r["bank"] or "", r["axis"] or "", shots), []).append(r)
    few = sorted({k[3] for k in groups if isinstance(k[3], int)})
    sections = []
    for model, bank, axis in sorted({k[:3] for k in groups}):
        failed = groups.get((model, bank, axis, "fewshot"), [])
        for shots in [None, *(few or (["few-shot"] if failed else []))]:
            found = list(groups.get((model, bank, axis, shots), [])) + (failed if shots is not None else [])
            if not found:
                continue
            sections.append(_table(model, bank, axis, shots, found, references))
    return sections


def _table(
    model: str,
    bank: str,
    axis: str,
    shots: int | str | None,
    rows: list[Mapping[str, Any]],
    refs: Mapping[tuple, float],
) -> Section:
    datasets = sorted({r["dataset"] for r in rows})
    failed = {r["dataset"] for r in rows if r["status"] == FAILED}
    chosen: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in sorted((r for r in rows if r["status"] != FAILED), key=lambda r: r["kind"] != "zeroshot"):
        chosen.setdefault((r["method"], r["dataset"]), r)  # zero-shot cells before few-shot runs' clip baseline
    methods = sorted({m for m, _ in chosen}, key=lambda m: (m != "clip", m)) or ["(every method)"]
    table = []
    for m in methods:
        line: dict[str, Any] = {"method": m}
        means = []
        for d in datasets:
            r = chosen.get((m, d))
            if r is None:
                line[d] = FAILED if d in failed else ""
                continue
            line[d] = cell_text(r, refs.get((r["run_id"], r["method"], r["shots"])))
            means.append(r["top1_mean"])
        line["Average"] = _pct(sum(means) / len(means)) if means and len(means) == len(datasets) else ""
        table.append(line)
    what = "zero-shot" if shots is None else f"{shots}-shot" if isinstance(shots, int) else str(shots)
    title = f"Top-1 (%), {what}: {model}" + (f", bank {bank}" if bank else "") + (f", {axis}" if axis else "")
    text = [f"Mean ± sample std over seeds; {MARKER}: paired difference from clip with p < {SIGNIFICANT} (exact "
            "McNemar on the same test images); (paper x): the published number for this dataset, backbone and "
            "weights."]  # fmt: skip
    return Section(title, text, [(table, ["method", *datasets, "Average"])])


def _failures(cells: Sequence[Mapping[str, Any]]) -> Section | None:
    failed = [c for c in cells if c["status"] == FAILED]
    if not failed:
        return None
    columns = ["dataset", "model", "bank", "kind", "axis", "error"]
    return Section(f"Failed cells ({len(failed)})", [], [([{c: f.get(c) for c in columns} for f in failed], columns)])


def _studies(layout: Layout, cells: Sequence[dict[str, Any]]) -> list[Section]:
    out = []
    rerank = rerank_study(layout, cells)
    if rerank:
        text = ["Relative to CODER on the same run: re-ranked = CODER's softmax margin below the run's threshold; "
                "corrected = wrong to right, broken = right to wrong, changed = another wrong class, unchanged = "
                "re-ranked and kept. stored: the run's own predictions; else re-scored from the stored "
                "embeddings at each of the run's classify.rerank_thresholds."]  # fmt: skip
        columns = ["dataset", "model", "bank", "axis", "threshold", "stored", *RERANK_COLUMNS]
        out.append(
            Section(
                "CODER* re-ranking", text, [(rerank, [c for c in columns if any(r[c] is not None for r in rerank)])]
            )
        )
    banks = bank_study(layout, cells)
    if banks:
        text = ["Per text type: duplicates within a class, texts that only restate the class name, classes without "
                "att/ana texts, mean cosine to the class-name prompt and mean pairwise cosine within a class (the "
                "run's text embeddings), beside the zero-shot top-1 of clip and coder with the bank."]  # fmt: skip
        columns = ["bank", "model_id", "text_type", "count", "duplicates", "restating", "classes_without",
                   "cosine_to_name", "cosine_within_class", "clip_top1", "coder_top1"]  # fmt: skip
        out.append(Section("Text banks", text, [(banks, columns)]))
    return out


def collect(layout: Layout, suite_id: str) -> tuple[str, list[Section]]:
    """The report's title and sections: a summary, the results tables, failed cells and the studies."""
    cells = suite_cells(layout, suite_id)
    rows = query(layout, ROWS_SQL, params=[suite_id]).to_pylist()
    counts: dict[str, int] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    summary = [
        {"setting": "suite", "value": cells[0]["suite_name"]}, {"setting": "suite id", "value": suite_id},
        {"setting": "cells", "value": ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))},
        {"setting": "datasets", "value": ", ".join(sorted({c["dataset"] for c in cells}))},
        {"setting": "models", "value": ", ".join(sorted({str(c["model"]) for c in cells}))},
        {"setting": "banks", "value": ", ".join(sorted({str(c["bank"]) for c in cells}))},
    ]  # fmt: skip
    if not any(r["delta_vs_clip"] is not None for r in rows):
        summary.append({"setting": "note", "value": "no paired statistics yet (written when the suite ends)"})
    sections = [Section("Suite", tables=[(summary, ["setting", "value"])])]
    sections += result_tables(rows, _references(layout, rows))
    failures = _failures(cells)
    studies = _axes(layout, suite_id, cells, rows) + _studies(layout, cells)
    return f"coderflow suite report: {suite_id}", sections + ([failures] if failures else []) + studies


def _bank_order(layout: Layout, suite_id: str, cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """The banks in the suite file's order (its plan.json), else in the cells' order."""
    plan = layout.suite_file(suite_id, "plan.json")
    planned = json.loads(plan.read_text()).get("cells", []) if plan.is_file() else []
    return list(dict.fromkeys(str(c["bank"]) for c in [*planned, *cells]))


def _axes(
    layout: Layout, suite_id: str, cells: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[Section]:
    """The class-count study (a figure per dataset, model and bank; CODER's cost per cell) and the banks compared."""
    out = []
    curves = scaling_curves(rows)
    if curves:
        figures = [
            Figure(f"top-1 against classes: {d}, {m}, {b}",
                   plots.render(plots.accuracy_vs_shots(c, f"{d}, {m}, bank {b}", xlabel="classes (nested subsets)")))
            for (d, m, b), c in sorted(curves.items())
        ]  # fmt: skip
        costs = scaling_costs(layout, suite_id, cells)
        text = ["Zero-shot top-1 of each method on nested, seeded class subsets of each dataset (dataset.class_subset),"
                " and CODER's cost per subset: the bank's texts (the length of a CODER vector) and the run's seconds "
                "(a run answered from stored results shows the seconds it took then)."]  # fmt: skip
        out.append(Section("Accuracy and cost against the number of classes", text, [(costs, list(costs[0]))] if costs
                           else [], figures))  # fmt: skip
    order = _bank_order(layout, suite_id, cells)
    compared = bank_comparisons(layout, rows, order) if len(order) > 1 else []
    if compared:
        text = [f"Each bank against {order[0]!r} (the suite's first) with the same method on the same test images: "
                "top-1 difference, paired bootstrap 95% interval, exact McNemar p."]  # fmt: skip
        out.append(Section("Text banks compared (LLM sensitivity)", text, [(compared, list(compared[0]))]))
    return out


def build_suite_report(layout: Layout, suite_id: str, fmt: str = "md") -> str:
    """The suite report as text: md, html (one file) or csv (benchmark.csv's rows)."""
    if fmt not in SUITE_REPORT_FORMATS:
        raise ValueError(f"--format {fmt!r}: choose {', '.join(SUITE_REPORT_FORMATS)}")
    if fmt == "csv":
        suite_cells(layout, suite_id)  # an unknown suite is refused
        return benchmark_csv(benchmark_rows(layout, suite_id))
    title, sections = collect(layout, suite_id)
    return to_html(title, sections, []) if fmt == "html" else to_markdown(title, sections, [])
