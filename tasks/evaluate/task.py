"""Prefect task: metrics of a run's predictions, per method, written beside them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc
from prefect import task

from coderflow.results import Evaluation
from coderflow.storage.arrays import list_matrix
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_rows
from coderflow.storage.schemas import METRICS
from coderflow.tasks.evaluate.metrics import classification_metrics, expected_calibration_error, seed_std


def _over_reps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """top1_mean / top1_std over the seeds of a zero-shot method run several times (WaffleCLIP's reps)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["metric"] == "top1" and r["class_index"] is None and r["shots"] is None and r["seed"] is not None:
            by_method.setdefault(r["method"], []).append(r)
    out = []
    for reps in by_method.values():
        values = [r["value"] for r in reps]
        for metric, value in (("top1_mean", float(np.mean(values))), ("top1_std", seed_std(values))):
            if value is not None:  # one rep has no spread
                out.append({**reps[0], "seed": None, "metric": metric, "value": value})
    return out


@task(name="evaluate-run")
def evaluate_run(
    run_id: str, model_id: str, n_classes: int, workdir: str, extra: list[dict[str, Any]] | None = None
) -> Evaluation:
    """top1/top5/mean per-class recall, per-class recall and expected calibration error (`ece`, from the stored
    confidences) for every (method, shots, seed) of the run.

    `extra` rows ({method, metric, value} plus optional shots, seed) add counters or chosen hyper-parameters, e.g.
    CODER*'s n_reranked or a few-shot method's alpha.
    """
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
        if "confidence" in part.column_names and part["confidence"].null_count == 0 and part.num_rows:
            correct = part["pred"].to_numpy() == labels
            ece = expected_calibration_error(part["confidence"].to_numpy(), correct)
            rows.append(
                {"run_id": run_id, **g, "model_id": model_id, "metric": "ece", "class_index": None, "value": ece}
            )
    dataset, split = (preds["dataset"][0].as_py(), preds["split"][0].as_py()) if preds.num_rows else (None, None)
    rows += _over_reps(rows)
    base = {"run_id": run_id, "dataset": dataset, "split": split, "model_id": model_id, "class_index": None}
    rows += [{**base, "shots": None, "seed": None, **row} for row in extra or []]
    path = write_rows(rows, METRICS, layout.run_file(run_id, "metrics.parquet"))
    return Evaluation(str(path), summary)


@task(name="store-metrics")
def store_metrics(run_id: str, dataset: str, split: str, rows: list[dict[str, Any]], workdir: str) -> str:
    """Metric rows that come from no predictions (e.g. intra-modal overlap) as the run's metrics.parquet."""
    base = {"run_id": run_id, "dataset": dataset, "split": split, "shots": None, "seed": None, "class_index": None}
    return str(
        write_rows([{**base, **r} for r in rows], METRICS, Layout.at(workdir).run_file(run_id, "metrics.parquet"))
    )
