"""Pure formatting of run reports: metric rows, markdown tables, artifact keys, CLIP_benchmark results (no Prefect)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from coderflow.console import printable

METRIC_COLUMNS = ("method", "shots", "top1", "top5", "mean_per_class_recall", "n_samples")
CONFUSED_COLUMNS = ("method", "true_class", "predicted_class", "n")


TRIVIAL_TOP5_CLASSES = 5  # with this many classes or fewer every prediction's top 5 holds the label


def without_trivial_top5(rows: Iterable[Mapping[str, Any]], n_classes: int | None) -> list[dict[str, Any]]:
    """Metric rows with `top5` blanked where the dataset has TRIVIAL_TOP5_CLASSES classes or fewer (always 1)."""
    trivial = n_classes is not None and 0 < n_classes <= TRIVIAL_TOP5_CLASSES
    return [{**r, "top5": None} if trivial else dict(r) for r in rows]


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free-form parts."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "coderflow"


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return value


def select_columns(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows reduced to `columns` (missing ones as None), floats rounded to 4 places: a table artifact's rows."""
    return [{c: _cell(row.get(c)) for c in columns} for row in rows]


_MARKDOWN_SPECIAL = re.compile(r"[\\`\[\]|$]")  # escapes, code, links and images, table cells, math


def markdown_escape(value: Any) -> str:
    """Outside text (class names, LLM texts, run names) as literal Markdown on one line: HTML is escaped as in the HTML
    report (`<img onerror=...>` shows as text), link, code, table and math characters get a backslash, and control
    characters are shown as escapes (console.printable)."""
    text = html.escape(printable(" ".join(str(value).split())), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\g<0>", text)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table; values and column names (which may be dataset names) are escaped
    (markdown_escape), None is blank."""

    def fmt(v: Any) -> str:
        return "" if v is None else markdown_escape(_cell(v))

    lines = ["| " + " | ".join(map(markdown_escape, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def confused_pairs_markdown(rows: Sequence[Mapping[str, Any]], run_id: str) -> str:
    """The report of a run's most confused (true, predicted) class pairs per method."""
    head = f"## Most confused class pairs, run `{run_id}`\n\n"
    if not rows:
        return head + "No misclassified samples."
    return head + markdown_table(rows, CONFUSED_COLUMNS)


def outputs_markdown(run_id: str, files: Mapping[str, object]) -> str:
    """Where a run's outputs are: one line per file with its path (a file:// link for absolute paths)."""
    lines = [f"## Outputs of run `{run_id}`", ""]
    for label, path in files.items():
        text = str(path)
        p = Path(text)
        linkable = p.is_absolute() and "://" not in text  # URL work directories (s3://, ...) are shown as is
        link = f"[`{p}`]({p.as_uri()})" if linkable else f"`{text}`"
        lines.append(f"- **{label}**: {link}")
    lines += [
        "",
        f"Query them with `coderflow query --workdir ... \"SELECT * FROM metrics WHERE run_id = '{run_id}'\"`.",
    ]
    return "\n".join(lines)


def clip_benchmark_result(row: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A zero-shot method's accuracies as CLIP_benchmark writes them (`clip_benchmark eval --output`): dataset, model,
    pretrained, task, metrics {acc1, acc5, mean_per_class_recall}, language; plus the coderflow method and run."""
    model = (manifest.get("config") or {}).get("model") or {}
    return {
        "dataset": manifest.get("dataset"),
        "model": model.get("name"),
        "pretrained": model.get("pretrained"),
        "task": "zeroshot_classification",
        "metrics": {"acc1": row["top1"], "acc5": row["top5"], "mean_per_class_recall": row["mean_per_class_recall"]},
        "language": "en",
        "method": row["method"],
        "run_id": manifest.get("run_id"),
    }
