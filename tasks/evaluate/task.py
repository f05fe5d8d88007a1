"""Prefect task: metrics of a run's predictions, per method, written beside them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
from prefect import task

from coderflow.storage.arrays import list_matrix
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_rows
from coderflow.storage.schemas import METRICS
from coderflow.tasks.evaluate.metrics import classification_metrics


@task(name="evaluate-run")
def evaluate_run(run_id: str, model_id: str, n_classes: int, workdir: str) -> dict[str, Any]:
    """top1/top5/mean per-class recall and per-class recall for every (method, shots, seed) of the run."""
    layout = Layout.at(workdir)
    preds = read_table(layout.run_file(run_id, "predictions.parquet"))
    preds = preds.filter(pc.is_valid(preds["label"]))
    rows: list[dict[str, Any]] = []
    summary: dict[str, float] = {}
    groups = preds.group_by(["method", "dataset", "split", "shots", "seed"], use_threads=False).aggregate([])
    for g in groups.to_pylist():
        mask = pc.and_(pc.equal(preds["method"], g["method"]), pc.equal(preds["dataset"], g["dataset"]))
        for key in ("shots", "seed"):
            col = preds[key]
            mask = pc.and_(mask, pc.is_null(col) if g[key] is None else pc.fill_null(pc.equal(col, g[key]), False))
        part = preds.filter(mask)
        labels = part["label"].to_numpy().astype(np.int64)
        for metric, ci, value in classification_metrics(labels, list_matrix(part["top5"]).astype(np.int64), n_classes):
            rows.append(
                {"run_id": run_id, **g, "model_id": model_id, "metric": metric, "class_index": ci, "value": value}
            )
            if metric == "top1" and g["shots"] is None:
                summary[g["method"]] = value
    path = write_rows(rows, METRICS, layout.run_file(run_id, "metrics.parquet"))
    return {"path": str(path), "top1": summary}
