"""`coderflow report`: one self-contained Markdown or HTML file about a run (tables, inline figures; no Prefect)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import numpy as np

from coderflow.console import printable
from coderflow.storage.db import query, sql_file
from coderflow.storage.layout import Layout
from coderflow.tasks.evaluate.compare import BOOTSTRAP_RESAMPLES, against_clip, compare_runs
from coderflow.tasks.evaluate.metrics import expected_calibration_error, reliability, seed_std
from coderflow.tasks.evaluate.reference import reference_warnings, stored_against_reference
from coderflow.tasks.report import plots
from coderflow.tasks.report.shift import SHIFT_NOTE, shift_table
from coderflow.tasks.report.tables import TRIVIAL_TOP5_CLASSES, markdown_escape, markdown_table, without_trivial_top5

MAX_RECALL_CLASSES = 30  # per-class recall bars: all classes up to this many, else the worst and best halves
MAX_CONFUSED_CLASSES = 12  # confusion heatmap: the classes of the most frequent confusions


@dataclass
class Figure:
    title: str
    svg: bytes


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    tables: list[tuple[list[dict[str, Any]], list[str]]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


# one prediction set per method: zero-shot, or the largest shots with the first seed
ONE_CELL = (
    "coalesce(shots, -1) = (SELECT coalesce(max(shots), -1) FROM predictions p2 WHERE p2.run_id = predictions.run_id "
    "AND p2.method = predictions.method) AND coalesce(seed, -1) = (SELECT coalesce(min(seed), -1) FROM predictions p3 "
    "WHERE p3.run_id = predictions.run_id AND p3.method = predictions.method)"
)


def _run(layout: Layout, run_id: str) -> dict[str, Any]:
    runs = query(layout, "SELECT * FROM runs WHERE run_id = ?", params=[run_id]).to_pylist()
    if not runs:
        raise ValueError(f"no run {run_id!r} in {layout.root}: list the runs with `coderflow runs`")
    return runs[0]


def _n_classes(layout: Layout, dataset: str) -> int | None:
    n = query(layout, "SELECT count(*) AS n FROM classes WHERE dataset = ?", params=[dataset])["n"][0].as_py()
    return n or None


def collect(layout: Layout, run_id: str, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[str, list[Section], list[str]]:
    """The report's title, sections and warnings for one run, read from the work directory."""
    run = _run(layout, run_id)
    config = json.loads(run["config"] or "{}")
    own = {"run_id": run_id, "dataset": run["dataset"]}  # its own test set; shifted ones: the shift section
    metrics = query(layout, sql_file("accuracy_per_method"), own, "method, shots").to_pylist()
    title = f"coderflow report: run {run_id}"
    sections = [_summary(run, config)]
    warnings: list[str] = []
    if metrics:
        sections.append(_metrics_section(layout, run_id, metrics, resamples, _n_classes(layout, run["dataset"])))
        ref_section, warnings = _reference_section(layout, config, metrics)
        sections.append(ref_section)
        n_preds = query(layout, "SELECT count(*) AS n FROM predictions WHERE run_id = ?", params=[run_id])["n"][0]
        if n_preds.as_py():  # an adapter-overlap run stores metrics only
            sections += _class_sections(layout, run_id, run["dataset"], metrics)
            sections.append(_calibration_section(layout, run_id, run["dataset"]))
        if any(m["shots"] is not None for m in metrics):
            sections.append(_shots_section(layout, run_id, run["dataset"]))
        if shift := shift_table(layout, run_id):
            sections.append(Section("Distribution shift", [SHIFT_NOTE], [(shift, list(shift[0]))]))
    else:
        sections.append(Section("Metrics", ["This run stored no accuracy metrics."]))
    return title, sections, warnings


def _summary(run: Mapping[str, Any], config: Mapping[str, Any]) -> Section:
    started, finished = run.get("started_at"), run.get("finished_at")
    duration = (finished - started).total_seconds() if started and finished else None
    model = config.get("model") or {}
    rows = [
        {"setting": "run", "value": run["run_id"]},
        {"setting": "flow", "value": run["flow"]},
        {"setting": "status", "value": run["status"]},
        {"setting": "started", "value": str(started)},
        {"setting": "duration (s)", "value": None if duration is None else f"{duration:.1f}"},
        {"setting": "dataset", "value": run["dataset"]},
        {"setting": "split", "value": (config.get("dataset") or {}).get("split")},
        {"setting": "preset", "value": config.get("preset")},
        {"setting": "model", "value": model.get("name")},
        {"setting": "pretrained", "value": model.get("pretrained") or "random weights"},
        {"setting": "precision", "value": model.get("precision")},
        {"setting": "model id", "value": run.get("model_id")},
        {"setting": "text bank", "value": run.get("textbank_id")},
        {"setting": "text generator", "value": (config.get("texts") or {}).get("generator")},
        {"setting": "methods", "value": ", ".join(config.get("methods") or [])},
    ]
    if run["flow"] == "few-shot":  # what the few-shot run did, not the zero-shot defaults it also carries
        rows = [r for r in rows if r["setting"] not in ("split", "methods")] + _fewshot_settings(config)
    versions = json.loads(run.get("versions") or "{}")
    if versions:
        rows.append({"setting": "versions", "value": ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))})
    return Section("Configuration", tables=[([r for r in rows if r["value"] not in (None, "")], ["setting", "value"])])


def _fewshot_settings(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A few-shot run's own settings: splits, shots, seeds, views, methods, search and the IMO adapter."""
    fs = config.get("fewshot") or {}

    def joined(key: str) -> str:
        return ", ".join(map(str, fs.get(key) or []))

    return [
        {"setting": "splits (support / val / test)",
         "value": " / ".join(str(fs.get(k)) for k in ("train_split", "val_split", "test_split"))},
        {"setting": "shots", "value": joined("shots")},
        {"setting": "seeds", "value": joined("seeds")},
        {"setting": "augment views", "value": fs.get("augment_views")},
        {"setting": "few-shot methods", "value": joined("methods")},
        {"setting": "search", "value": f"{fs.get('search')} on the test split (the reference's ImageNet protocol)"
         if fs.get("val_split") == fs.get("test_split") else fs.get("search")},
        {"setting": "adapter", "value": (config.get("model") or {}).get("adapter") or "none"},
    ]  # fmt: skip


def metric_rows(
    layout: Layout, run_id: str, metrics: list[dict[str, Any]], resamples: int, n_classes: int | None = None
) -> list[dict[str, Any]]:
    """The run's results table, best top-1 first (zero-shot, then by shots): per method (and shots) the unrounded
    accuracies, the sample std of top-1 over seeds, and each zero-shot method's paired difference from clip."""
    zero = {m["method"] for m in metrics if m["shots"] is None}
    diffs: dict[str, dict[str, Any]] = {}
    methods_a, methods_b = against_clip(zero)
    if methods_a:
        rows = compare_runs(layout, run_id, methods_a, run_id, methods_b, resamples=resamples)
        diffs = {r["method_a"]: r for r in rows if r["shots"] is None}
    seeds = query(
        layout, "SELECT method, shots, list(value) AS v FROM metrics WHERE run_id = ? AND metric = 'top1' AND "
        "class_index IS NULL AND shots IS NOT NULL AND dataset = (SELECT dataset FROM runs WHERE run_id = ?) "
        "GROUP BY ALL", params=[run_id, run_id],
    ).to_pylist()  # fmt: skip
    spread = {(r["method"], r["shots"]): r["v"] for r in seeds}
    table = []
    for m in sorted(without_trivial_top5(metrics, n_classes),
                    key=lambda r: (r["shots"] is not None, r["shots"] or 0, -(r["top1"] or 0))):  # fmt: skip
        d = diffs.get(m["method"]) if m["shots"] is None else None
        values = spread.get((m["method"], m["shots"]), [])
        table.append({
            "method": m["method"], "shots": m["shots"], "top1": m["top1"],
            "top1_std": seed_std(values), "seeds": len(values) or None, "top5": m["top5"],
            "mean_per_class_recall": m["mean_per_class_recall"], "ece": m["ece"], "n": m["n_samples"],
            "vs_clip": None if d is None else d["difference"], "ci_low": None if d is None else d["ci_low"],
            "ci_high": None if d is None else d["ci_high"], "p_value": None if d is None else d["p_value"],
        })  # fmt: skip
    return table


def _metrics_section(
    layout: Layout, run_id: str, metrics: list[dict[str, Any]], resamples: int, n_classes: int | None = None
) -> Section:
    table = []
    for r in metric_rows(layout, run_id, metrics, resamples, n_classes):
        table.append({
            "method": r["method"], "shots": r["shots"], "top1": r["top1"], "top5": r["top5"],
            "mean_per_class_recall": r["mean_per_class_recall"], "ece": r["ece"], "n": r["n"],
            "vs clip": r["vs_clip"],
            "95% CI": None if r["vs_clip"] is None else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
            "McNemar p": r["p_value"],
        })  # fmt: skip
    columns = [c for c in table[0] if any(r[c] is not None for r in table)]
    text = ["Top-1 sorted best first. vs clip: accuracy difference from CLIP's prompt ensemble on the same images, "
            f"with a paired bootstrap 95% interval ({resamples} resamples) and the exact McNemar p-value."]  # fmt: skip
    text = text if any(r["vs clip"] is not None for r in table) else []
    if n_classes and n_classes <= TRIVIAL_TOP5_CLASSES:
        text.append(f"Top-5 not shown: with {n_classes} classes every top 5 holds the true class.")
    return Section("Metrics", text, [(table, columns)])


def _reference_section(
    layout: Layout, config: Mapping[str, Any], metrics: list[dict[str, Any]]
) -> tuple[Section, list[str]]:
    key, rows = stored_against_reference(layout, config, metrics)
    dataset, backbone, pretrained = key
    if not rows:
        return Section("Reference numbers", [
            f"No published numbers for dataset {dataset!r}, backbone {backbone!r}, weights {pretrained or 'random'!r} "
            "in the reference_results table."
        ]), []  # fmt: skip
    warnings = reference_warnings(rows, key)
    text = [f"Published numbers for {dataset} with {backbone} ({pretrained}); difference = this run - reference."]
    columns = ["method", "shots", "metric", "value", "reference", "difference", "source"]
    return Section("Reference numbers", text + [f"Warning: {w}" for w in warnings], [(rows, columns)]), warnings


def _best(metrics: list[dict[str, Any]]) -> str:
    """The method with the best top-1 (at its largest shots)."""
    return max(metrics, key=lambda m: (m["shots"] or 0, m["top1"] or 0))["method"]


def _class_sections(layout: Layout, run_id: str, dataset: str, metrics: list[dict[str, Any]]) -> list[Section]:
    names = {
        r["class_index"]: r["class_name"]
        for r in query(layout, "SELECT * FROM classes WHERE dataset = ?", params=[dataset]).to_pylist()
    }
    best = _best(metrics)
    shown = [best] + (["clip"] if best != "clip" and any(m["method"] == "clip" for m in metrics) else [])
    recall_rows = query(
        layout, "SELECT method, class_index, avg(value) AS recall FROM metrics WHERE run_id = ? AND metric = 'recall' "
        "AND dataset = ? AND coalesce(shots, -1) = (SELECT coalesce(max(shots), -1) FROM metrics m2 WHERE "
        "m2.run_id = metrics.run_id AND m2.method = metrics.method) GROUP BY ALL", params=[run_id, dataset],
    ).to_pylist()  # fmt: skip
    recall = {(r["method"], r["class_index"]): r["recall"] for r in recall_rows}
    classes = sorted({c for m, c in recall if m == best}, key=lambda c: (recall[(best, c)], c))
    note = []
    if len(classes) > MAX_RECALL_CLASSES:
        half = MAX_RECALL_CLASSES // 2
        note = [f"{len(classes)} classes: the {half} with the lowest and the {half} with the highest recall of {best}."]
        classes = classes[:half] + classes[-half:]
    label = [names.get(c, str(c)) for c in classes]
    bars = {m: [recall.get((m, c), 0.0) for c in classes] for m in shown}
    out = []
    if classes:
        fig = plots.recall_bars(label, bars, f"per-class recall ({', '.join(shown)})")
        out.append(Section("Per-class recall", note, figures=[Figure("per-class recall", plots.render(fig))]))
    pairs = query(
        layout, f"SELECT label, pred, count(*) AS n FROM predictions WHERE run_id = ? AND method = ? AND "
        f"dataset = ? AND label IS NOT NULL AND {ONE_CELL} GROUP BY ALL", params=[run_id, best, dataset],
    ).to_pylist()  # fmt: skip
    wrong = sorted((p for p in pairs if p["label"] != p["pred"]), key=lambda p: -p["n"])
    if not wrong:
        out.append(Section("Most confused classes", [f"{best} misclassified no labelled sample."]))
        return out
    picked: list[int] = []
    for p in wrong:
        for c in (p["label"], p["pred"]):
            if c not in picked and len(picked) < MAX_CONFUSED_CLASSES:
                picked.append(c)
    index = {c: i for i, c in enumerate(picked)}
    counts = np.zeros((len(picked), len(picked)), dtype=np.int64)
    for p in wrong:
        if p["label"] in index and p["pred"] in index:
            counts[index[p["label"]], index[p["pred"]]] = p["n"]
    fig = plots.confusion_heatmap([names.get(c, str(c)) for c in picked], counts, f"{best}: most confused classes")
    top = [{"true": names.get(p["label"], p["label"]), "predicted": names.get(p["pred"], p["pred"]), "n": p["n"]}
           for p in wrong[:10]]  # fmt: skip
    text = [f"Misclassifications of {best} among the classes of its most frequent confusions (correct ones left out)."]
    out.append(Section("Most confused classes", text, [(top, ["true", "predicted", "n"])],
                       [Figure("confusion heatmap", plots.render(fig))]))  # fmt: skip
    return out


def _calibration_section(layout: Layout, run_id: str, dataset: str) -> Section:
    rows = query(
        layout, f"SELECT method, confidence, pred = label AS correct FROM predictions WHERE run_id = ? AND "
        f"dataset = ? AND label IS NOT NULL AND {ONE_CELL}", params=[run_id, dataset],
    )  # fmt: skip
    if "confidence" not in rows.column_names or rows.num_rows == 0 or rows["confidence"].null_count == rows.num_rows:
        return Section("Calibration", ["This run stored no confidences (it predates them): re-run it to see them."])
    methods = rows["method"].to_numpy(zero_copy_only=False)
    conf = rows["confidence"].to_numpy(zero_copy_only=False).astype(np.float64)
    correct = rows["correct"].to_numpy(zero_copy_only=False).astype(bool)
    bins, table = {}, []
    for method in sorted(set(methods.tolist())):
        m = (methods == method) & ~np.isnan(conf)
        bins[method] = reliability(conf[m], correct[m])
        table.append({"method": method, "ece": expected_calibration_error(conf[m], correct[m]),
                      "mean confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})  # fmt: skip
    text = ["Expected calibration error over 15 equal-width confidence bins; confidence is the softmax probability "
            "of the predicted class (cosine scores scaled by CLIP's 100)."]  # fmt: skip
    fig = plots.reliability_diagram(bins, "reliability")
    return Section("Calibration", text, [(table, ["method", "ece", "mean confidence", "accuracy"])],
                   [Figure("reliability diagram", plots.render(fig))])  # fmt: skip


def _shots_section(layout: Layout, run_id: str, dataset: str) -> Section:
    rows = query(
        layout, "SELECT method, shots, seed, value FROM metrics WHERE run_id = ? AND dataset = ? AND metric = 'top1' "
        "AND class_index IS NULL", params=[run_id, dataset],
    ).to_pylist()  # fmt: skip
    curves, zero = plots.shots_curves(rows)
    n_classes = query(layout, "SELECT count(*) AS n FROM classes WHERE dataset = ?", params=[dataset])["n"][0].as_py()
    chance = 1.0 / n_classes if n_classes else None
    fig = plots.accuracy_vs_shots(curves, f"few-shot run {run_id}", zero, chance)
    table = [
        {"method": m, "shots": s, "top1 mean": float(np.mean(v)), "top1 std": seed_std(v), "seeds": len(v)}
        for m, by in sorted(curves.items()) for s, v in sorted(by.items())
    ]  # fmt: skip
    return Section("Accuracy against shots", [], [(table, list(table[0]) if table else [])],
                   [Figure("accuracy vs shots", plots.render(fig))])  # fmt: skip


# rendering ---------------------------------------------------------------------------------------------------------


def figure_files(sections: Sequence[Section], folder: str) -> dict[str, bytes]:
    """The figures as files `<folder>/fig-N.svg` (N from 1, in the report's order), the paths to_markdown links."""
    figures = [f for s in sections for f in s.figures]
    return {f"{folder}/fig-{i}.svg": f.svg for i, f in enumerate(figures, start=1)}


def to_markdown(title: str, sections: Sequence[Section], warnings: Sequence[str], figures: str | None = None) -> str:
    """The report as GitHub-flavoured Markdown. Figures: with `figures` (a folder relative to the .md) linked as
    `<figures>/fig-N.svg` files (figure_files), which code-hosting sites render; else inline SVG data URLs."""
    links = iter(figure_files(sections, figures)) if figures else None
    e = markdown_escape  # run names, class and method names are text, never Markdown or HTML
    lines = [f"# {e(title)}", "", f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by coderflow.", ""]
    lines += [f"> **Warning:** {e(w)}" for w in warnings] + ([""] if warnings else [])
    for s in sections:
        lines += [f"## {e(s.title)}", ""]
        for p in s.text:
            lines += [e(p), ""]
        for rows, columns in s.tables:
            cells = [{c: _fmt(r.get(c)) for c in columns} for r in rows]
            lines += [markdown_table(cells, columns), ""]
        for f in s.figures:
            if links is not None:
                lines += [f"![{f.title}]({quote(next(links))})", ""]
            else:
                data = base64.b64encode(f.svg).decode()
                lines += [f"![{f.title}](data:image/svg+xml;base64,{data})", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warning{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}figure{margin:1em 0}svg{max-width:100%;height:auto}
"""


def to_html(title: str, sections: Sequence[Section], warnings: Sequence[str]) -> str:
    """The report as one HTML file: inline CSS and SVG figures, no scripts and no external resources."""

    def e(text: str) -> str:
        return html.escape(printable(text))

    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
        f"<p>Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by coderflow.</p>",
    ]  # fmt: skip
    out += [f'<p class="warning"><strong>Warning:</strong> {e(w)}</p>' for w in warnings]
    for s in sections:
        out.append(f"<section><h2>{e(s.title)}</h2>")
        out += [f"<p>{e(p)}</p>" for p in s.text]
        for rows, columns in s.tables:
            out.append("<table><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr></thead><tbody>")
            for r in rows:
                cells = "".join(
                    f'<td class="num">{e(_fmt(r.get(c)))}</td>' if isinstance(r.get(c), int | float)
                    else f"<td>{e(_fmt(r.get(c)))}</td>" for c in columns
                )  # fmt: skip
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        for f in s.figures:
            svg = f.svg.decode()
            svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype
            out.append(f'<figure aria-label="{e(f.title)}">{svg}<figcaption>{e(f.title)}</figcaption></figure>')
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
                                                     "^": r"\textasciicircum{}"}  # fmt: skip
PAPER_COLUMNS = ("method", "shots", "top1", "top1_std", "seeds", "top5", "mean_per_class_recall", "ece", "n",
                 "vs_clip", "ci_low", "ci_high", "p_value")  # fmt: skip


def latex_escape(text: Any) -> str:
    """Text as literal LaTeX (method and run names hold underscores)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in printable(str(text)))


def to_latex(run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table as a LaTeX (booktabs) table: accuracies in percent, mean +- sample std over seeds for
    few-shot rows, each zero-shot method's difference from clip with its 95% interval and McNemar p."""

    def pct(v: Any, sign: bool = False) -> str:
        return "" if v is None else f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"

    def top1(r: Mapping[str, Any]) -> str:
        return pct(r["top1"]) + ("" if r["top1_std"] is None else f" $\\pm$ {pct(r['top1_std'])}")

    cells = {
        "Method": lambda r: latex_escape(r["method"]), "Shots": lambda r: "" if r["shots"] is None else str(r["shots"]),
        "Top-1": top1, "Top-5": lambda r: pct(r["top5"]),
        "Mean per-class recall": lambda r: pct(r["mean_per_class_recall"]), "ECE": lambda r: pct(r["ece"]),
        "$\\Delta$ vs CLIP": lambda r: pct(r["vs_clip"], True),
        "95\\% CI": lambda r: "" if r["ci_low"] is None else f"[{pct(r['ci_low'], True)}, {pct(r['ci_high'], True)}]",
        "$p$": lambda r: "" if r["p_value"] is None else f"{r['p_value']:.3g}",
    }  # fmt: skip
    body = [{h: f(r) for h, f in cells.items()} for r in rows]
    heads = [h for h in cells if any(b[h] for b in body)]
    caption = (f"Accuracy (\\%) of run {latex_escape(run['run_id'])} on {latex_escape(run['dataset'])}: test top-1"
               " (mean $\\pm$ sample std over seeds for few-shot rows); $\\Delta$: paired difference from CLIP's "
               "prompt ensemble, bootstrap 95\\% CI, exact McNemar $p$.")  # fmt: skip
    lines = [
        "% coderflow report --format latex (needs \\usepackage{booktabs})", "\\begin{table}[t]", "\\centering",
        f"\\caption{{{caption}}}", f"\\label{{tab:{re.sub(r'[^A-Za-z0-9:.-]', '-', str(run['run_id']))}}}",
        "\\begin{tabular}{l" + "r" * (len(heads) - 1) + "}", "\\toprule", " & ".join(heads) + r" \\", "\\midrule",
    ]  # fmt: skip
    lines += [" & ".join(b[h] for h in heads) + r" \\" for b in body]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def to_csv(run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table as CSV, one row per method (and shots): unrounded fractions, blank where not applicable."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("run_id", "dataset", *PAPER_COLUMNS))
    for r in rows:
        writer.writerow([run["run_id"], run["dataset"], *("" if r[c] is None else r[c] for c in PAPER_COLUMNS)])
    return out.getvalue()


REPORT_FORMATS = ("md", "html", "latex", "csv")


@dataclass
class Report:
    """A rendered report: its text, its warnings, and the files it links (path relative to the report: bytes)."""

    text: str
    warnings: list[str]
    files: dict[str, bytes] = field(default_factory=dict)


def build_report(
    layout: Layout, run_id: str, fmt: str = "md", resamples: int = BOOTSTRAP_RESAMPLES, figures: str | None = None
) -> Report:
    """The report in `fmt`: md (figures as files under the folder `figures` when given, else data URLs), html
    (one file, inline SVG), or latex / csv (the results table a paper needs)."""
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"--format {fmt!r}: choose {', '.join(REPORT_FORMATS)}")
    if fmt in ("latex", "csv"):
        run = _run(layout, run_id)
        own = {"run_id": run_id, "dataset": run["dataset"]}
        metrics = query(layout, sql_file("accuracy_per_method"), own, "method, shots").to_pylist()
        rows = metric_rows(layout, run_id, metrics, resamples, _n_classes(layout, run["dataset"])) if metrics else []
        return Report((to_latex if fmt == "latex" else to_csv)(run, rows), [])
    title, sections, warnings = collect(layout, run_id, resamples)
    if fmt == "html":
        return Report(to_html(title, sections, warnings), warnings)
    files = figure_files(sections, figures) if figures else {}
    return Report(to_markdown(title, sections, warnings, figures), warnings, files)
