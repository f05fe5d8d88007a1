"""Prefect task: run zero-shot methods over stored embeddings and write the run's predictions."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from coderflow.storage.arrays import load_images, load_texts
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_table
from coderflow.storage.schemas import PREDICTIONS
from coderflow.tasks.classify.predict import prediction_table
from coderflow.tasks.classify.zeroshot import check_methods, score


@task(name="classify-zero-shot")
def classify_zero_shot(
    run_id: str, dataset: str, split: str, model_id: str, textbank_id: str, methods: list[str], workdir: str
) -> dict[str, Any]:
    """All requested methods over one load of the embeddings; predictions land in runs/<run_id>/."""
    check_methods(methods)
    layout = Layout.at(workdir)
    images = load_images(layout, model_id, dataset, split)
    texts = load_texts(layout, textbank_id, model_id)
    tables = []
    for method in methods:
        scores, is_logits = score(method, images.x, texts)
        tables.append(
            prediction_table(
                scores, images.keys, images.labels, run_id=run_id, method=method, dataset=dataset, split=split,
                logits=is_logits,
            )
        )  # fmt: skip
    path = write_table(pa.concat_tables(tables), layout.run_file(run_id, "predictions.parquet"), PREDICTIONS)
    get_run_logger().info(
        "%d samples classified with %s (%d images failed to embed)", len(images.keys), methods, images.n_errors
    )
    return {"path": str(path), "n_samples": len(images.keys), "n_errors": images.n_errors, "n_classes": texts.n_classes}
