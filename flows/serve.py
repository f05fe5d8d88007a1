"""`coderflow serve`: the flows as scheduled deployments served from this process (a laptop's alternative to workers)."""

from __future__ import annotations

from typing import Any

from coderflow.config import PipelineConfig
from coderflow.flows.naming import run_tags

DEFAULT_CRON = "0 2 * * *"  # nightly, 02:00
SECTION_OF = {"params": "classify"}  # flow parameter -> config section, where the names differ


def _flows() -> dict[str, Any]:
    """The served flows by deployment key (their Prefect flow names)."""
    from coderflow.flows import pipeline as p

    return {f.name: f for f in (p.pipeline, p.ingest_dataset, p.embed_images, p.text_bank, p.build_coder, p.classify)}


def stage_parameters(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Default parameters of each flow's deployment: the config sections its signature names (a flow parameter, a
    YAML key and a flag are one name); `params` is the classify flow's `classify` section."""
    import inspect

    c = cfg.model_dump(mode="json")
    out = {}
    for key, flow in _flows().items():
        names = inspect.signature(flow.fn).parameters
        out[key] = {n: c[SECTION_OF.get(n, n)] for n in names if SECTION_OF.get(n, n) in c}
    out["pipeline"] = {"config": c}
    return out


def deployments(cfg: PipelineConfig, name: str = "laptop", cron: str | None = DEFAULT_CRON) -> list[Any]:
    """One deployment per flow; the end-to-end pipeline on `cron` (None: no schedule), the stages on demand."""
    flows = _flows()  # the runs load these flows from their files; the pipeline's runner comes from config.runner
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
