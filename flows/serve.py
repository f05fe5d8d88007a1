"""`coderflow serve`: the flows as scheduled deployments served from this process (a laptop's alternative to workers)."""

from __future__ import annotations

from typing import Any

from coderflow.config import PipelineConfig
from coderflow.flows.naming import run_tags

DEFAULT_CRON = "0 2 * * *"  # nightly, 02:00


def stage_parameters(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Default parameters of each flow's deployment, from one pipeline configuration (JSON-ready)."""
    c = cfg.model_dump(mode="json")
    common = {"dataset": c["dataset"], "workdir": c["workdir"]}
    with_model = {**common, "model": c["model"]}
    return {
        "pipeline": {"config": c},
        "ingest-dataset": common,
        "embed-images": {**with_model, "max_failure_rate": c["max_failure_rate"]},
        "text-bank": {**with_model, "texts": c["texts"], "templates": c["templates"]},
        "build-coder": {**with_model, "coder": c["coder"]},  # textbank_id: given per run
        "classify": {**with_model, "methods": c["methods"], "params": c["classify"]},  # textbank_id: per run
    }


def deployments(cfg: PipelineConfig, name: str = "laptop", cron: str | None = DEFAULT_CRON) -> list[Any]:
    """One deployment per flow; the end-to-end pipeline on `cron` (None: no schedule), the stages on demand."""
    from coderflow.flows import pipeline as p

    # The runs load these flows from their files; the pipeline's task runner comes from config.runner.
    flows = {
        "pipeline": p.pipeline,
        "ingest-dataset": p.ingest_dataset,
        "embed-images": p.embed_images,
        "text-bank": p.text_bank,
        "build-coder": p.build_coder,
        "classify": p.classify,
    }
    params = stage_parameters(cfg)
    tags = ["coderflow", *run_tags(params["pipeline"])]
    return [
        flow.to_deployment(
            name=name,
            parameters=params[key],
            tags=tags,
            cron=cron if key == "pipeline" and cron else None,
            description=f"coderflow {key} on {cfg.dataset.name} with {cfg.model.name} (served by `coderflow serve`)",
        )
        for key, flow in flows.items()
    ]


def serve_flows(cfg: PipelineConfig, name: str = "laptop", cron: str | None = DEFAULT_CRON, limit: int = 1) -> None:
    """Serve every flow until interrupted (Ctrl-C); scheduled and UI-triggered runs execute in this process."""
    from prefect import serve

    serve(*deployments(cfg, name, cron), limit=limit)
