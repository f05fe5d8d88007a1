"""Prefect artifacts of a run: metrics and confused-pair tables, output paths, and shard progress."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture, as_completed

from coderflow.progress import stage_progress
from coderflow.results import RunReport
from coderflow.storage.atomic import write_text
from coderflow.storage.db import query, sql_file
from coderflow.storage.layout import Layout
from coderflow.tasks.report.tables import (
    CONFUSED_COLUMNS,
    METRIC_COLUMNS,
    artifact_key,
    clip_benchmark_result,
    confused_pairs_markdown,
    outputs_markdown,
    select_columns,
)


def _metrics_artifact(layout: Layout, run_id: str, key: str, description: str) -> list[dict[str, Any]]:
    """The run's accuracy per method as a table artifact under `key` (rounded to show); its rows, unrounded."""
    metrics = query(layout, sql_file("accuracy_per_method"), {"run_id": run_id}, "method, shots").to_pylist()
    create_table_artifact(select_columns(metrics, METRIC_COLUMNS), key=key, description=description)
    return metrics


@task(name="publish-metrics")
def publish_metrics(run_id: str, dataset: str, workdir: str, flow: str = "pipeline") -> str:
    """The run's metrics table (the one `classify` publishes as `metrics-<dataset>`) on the calling flow run too, keyed
    `<flow>-metrics-<dataset>`: the parent run shows its results, and each key keeps one version per run."""
    key = artifact_key(flow, "metrics", dataset)
    _metrics_artifact(Layout.at(workdir), run_id, key, f"Accuracy per method of {flow} run `{run_id}` on `{dataset}`")
    return key


@task(name="report-run")
def report_run(run_id: str, dataset: str, workdir: str, top_confused: int = 10) -> RunReport:
    """Publish a finished run as artifacts (metrics per method, top confused pairs, output paths) and write its
    CLIP_benchmark-compatible result files."""
    layout = Layout.at(workdir)
    metrics_key = artifact_key("metrics", dataset)
    rows = _metrics_artifact(layout, run_id, metrics_key, f"Accuracy per method of run `{run_id}` on `{dataset}`")
    benchmark = write_clip_benchmark_results(layout, run_id, rows)
    order = "q.method, q.n DESC, q.label, q.pred"
    confused = query(layout, sql_file("confused_pairs"), {"run_id": run_id}, order, top_confused).to_pylist()
    create_markdown_artifact(
        confused_pairs_markdown(select_columns(confused, CONFUSED_COLUMNS), run_id),
        key=artifact_key("confused-pairs", dataset),
        description=f"Top {top_confused} confused class pairs of run `{run_id}`",
    )
    files = {
        "predictions": layout.run_file(run_id, "predictions.parquet"),
        "metrics": layout.run_file(run_id, "metrics.parquet"),
        "manifest": layout.run_file(run_id, "manifest.json"),
        **{f"CLIP_benchmark result ({p.stem})": p for p in benchmark},
        "DuckDB database": layout.database,
    }
    create_markdown_artifact(
        outputs_markdown(run_id, files), key=artifact_key("outputs", dataset), description="Where the results are"
    )  # fmt: skip
    return RunReport(metrics_key, [r["method"] for r in rows], len(confused))


def write_clip_benchmark_results(layout: Layout, run_id: str, metrics: Sequence[dict[str, Any]]) -> list[Any]:
    """runs/<run>/clip_benchmark/<method>.json, one CLIP_benchmark result file per zero-shot method of the run
    (`metrics`: its `accuracy_per_method` rows)."""
    manifest = json.loads(layout.run_file(run_id, "manifest.json").read_text())
    paths = []
    for row in metrics:
        if row["shots"] is None:
            path = layout.run_file(run_id, f"clip_benchmark/{row['method']}.json")
            write_text(json.dumps(clip_benchmark_result(row, manifest), indent=2), path)
            paths.append(path)
    return paths


def results_with_progress(
    futures: Sequence[PrefectFuture[Any]], what: str, item_unit: str = "", items: str = "rows"
) -> list[Any]:
    """Wait for mapped tasks, moving a progress artifact (UI) and the console's stage bar on as each finishes;
    results in submission order. `items`: the result field counted as `item_unit` (images, rows); a result that
    says `skipped` counts as cached, its `errors` as failed."""
    total = len(futures)
    if not total:
        return []
    artifact_id = create_progress_artifact(0.0, description=f"{what}: 0 of {total} done")
    index = {id(f): i for i, f in enumerate(futures)}
    results: list[Any] = [None] * total
    with stage_progress(what, total, "shards", item_unit) as bar:
        for done, future in enumerate(as_completed(list(futures)), start=1):
            result = future.result()
            results[index[id(future)]] = result
            skipped = bool(getattr(result, "skipped", False))
            count = 0 if skipped else getattr(result, items, 0)
            failed = getattr(result, "errors", 0)
            bar.advance(1, items=count, failed=failed, cached=int(skipped))
            update_progress_artifact(artifact_id, 100.0 * done / total, description=f"{what}: {done} of {total} done")
    return results
