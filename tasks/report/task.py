"""Prefect artifacts of a run: metrics and confused-pair tables, output paths, and shard progress."""

from __future__ import annotations

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
from coderflow.storage.db import query, sql_file
from coderflow.storage.layout import Layout
from coderflow.tasks.report.tables import (
    CONFUSED_COLUMNS,
    METRIC_COLUMNS,
    artifact_key,
    confused_pairs_markdown,
    outputs_markdown,
    select_columns,
)


@task(name="report-run")
def report_run(run_id: str, dataset: str, workdir: str, top_confused: int = 10) -> dict[str, Any]:
    """Publish a finished run as artifacts: metrics per method (table), top confused pairs and output paths."""
    layout = Layout.at(workdir)
    metrics = query(layout, sql_file("accuracy_per_method"), {"run_id": run_id}, "method, shots").to_pylist()
    rows = select_columns(metrics, METRIC_COLUMNS)
    metrics_key = artifact_key("metrics", dataset)
    create_table_artifact(
        rows, key=metrics_key, description=f"Accuracy per method of run `{run_id}` on `{dataset}`"
    )  # fmt: skip
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
        "DuckDB database": layout.database,
    }
    create_markdown_artifact(
        outputs_markdown(run_id, files), key=artifact_key("outputs", dataset), description="Where the results are"
    )  # fmt: skip
    return {"metrics_key": metrics_key, "methods": [r["method"] for r in rows], "confused_pairs": len(confused)}


def results_with_progress(
    futures: Sequence[PrefectFuture[Any]], what: str, item_unit: str = "", items: str = "rows"
) -> list[Any]:
    """Wait for mapped tasks, moving a progress artifact (UI) and the console's stage bar on as each finishes;
    results in submission order. `items`: the result key counted as `item_unit` (images, rows)."""
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
            count = result.get(items, 0) if isinstance(result, dict) and not result.get("skipped") else 0
            bar.advance(1, items=count, failed=result.get("errors", 0) if isinstance(result, dict) else 0)
            update_progress_artifact(artifact_id, 100.0 * done / total, description=f"{what}: {done} of {total} done")
    return results
