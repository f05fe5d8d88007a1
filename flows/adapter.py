"""IMO adapter flows: train adapters on a labeled collection, and measure overlap of original vs adapted features."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow

from coderflow.config import PipelineConfig
from coderflow.flows.bookkeeping import recorded_run, resolved_workdir
from coderflow.flows.naming import run_namer, tag_flow_run
from coderflow.flows.pipeline import embed_images, ingest_dataset
from coderflow.flows.runners import holds_workdir_lock, subflows_share_heartbeat
from coderflow.results import AdapterResult, OverlapResult
from coderflow.storage.runs import new_run_id
from coderflow.tasks.adapter.task import measure_overlap, train_adapter
from coderflow.tasks.embed.task import describe_model
from coderflow.tasks.evaluate.task import store_metrics


@flow(name="train-adapter", flow_run_name=run_namer(what="train-adapter"), on_running=[tag_flow_run])
@subflows_share_heartbeat
@holds_workdir_lock
def adapter_train(config: PipelineConfig) -> AdapterResult:
    """Ingest the training collection (a no-op when done) and train adapters on it; returns the adapter id."""
    workdir = resolved_workdir(config.workdir)
    ingest_dataset(config.dataset.model_copy(update={"split": config.adapter.train_split}), workdir)
    original = config.model.model_copy(update={"adapter": None})  # adapters are trained on the original encoder
    return train_adapter(config.dataset.name, original, config.adapter, workdir)


@flow(name="adapter-overlap", flow_run_name=run_namer(what="adapter-overlap"), on_running=[tag_flow_run])
@subflows_share_heartbeat
@holds_workdir_lock
def adapter_overlap(config: PipelineConfig) -> OverlapResult:
    """Intra-modal overlap and feature variance of a labeled split with the original and the adapted image encoder."""
    if not config.model.adapter:
        raise ValueError("adapter-overlap needs model.adapter (an id from `coderflow adapter train`)")
    workdir = resolved_workdir(config.workdir)
    ds = config.dataset
    ingest_dataset(ds, workdir)
    rows = []
    models = {"original": config.model.model_copy(update={"adapter": None}), "adapted": config.model}
    ids = {}
    for name, model in models.items():
        embed_images(ds, model, workdir, config.max_failure_rate)
        ids[name] = describe_model(model, workdir).model_id
        rows += measure_overlap(ds.name, ds.split, ids[name], config.adapter, workdir)
    run_id = new_run_id(config.run_name or "overlap")
    record = {
        "flow": "adapter-overlap",
        "started_at": datetime.now(UTC),
        "config": config.model_dump(mode="json"),
        "dataset": ds.name,
        "model_id": ids["adapted"],
        "textbank_id": None,
        "extra": {"models": ids},
    }
    with recorded_run(run_id, workdir, record):
        store_metrics(run_id, ds.name, ds.split, rows, workdir)
    return OverlapResult(run_id, ids, rows)
