"""`coderflow serve`: the flows as scheduled deployments served from this process (a laptop's alternative to workers)."""

from __future__ import annotations

from typing import Any

from coderflow.config import PipelineConfig
from coderflow.storage.layout import safe_name
from coderflow.suite_config import SuiteFile

DEFAULT_CRON = "0 2 * * *"  # nightly, 02:00


def _flows() -> dict[str, Any]:
    """The served flows by deployment key (their Prefect flow names): every flow of coderflow."""
    from coderflow.flows import adapter as a
    from coderflow.flows import fewshot as f
    from coderflow.flows import pipeline as p

    flows = (p.pipeline, p.ingest_dataset, p.embed_images, p.text_bank, p.import_texts, p.build_coder, p.classify)
    return {flow.name: flow for flow in (*flows, f.fewshot, a.adapter_train, a.adapter_overlap)}


def stage_parameters(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Default parameters of each flow's deployment: the whole config for the flows that take `config` (pipeline,
    few-shot, train-adapter, adapter-overlap), else the config sections its signature names (a flow parameter, a YAML
    key and a flag are one name). What no config holds is given per run: `textbank_id` (build-coder, classify),
    `path` and `fmt` (import-texts)."""
    import inspect

    c = cfg.model_dump(mode="json")
    out = {}
    for key, flow in _flows().items():
        names = list(inspect.signature(flow.fn).parameters)
        if names == ["config"]:
            out[key] = {"config": c}
        else:
            out[key] = {n: c[n] for n in names if n in c}
    return out


def suite_deployment(suite: SuiteFile, cron: str | None = DEFAULT_CRON) -> Any:
    """The `suite` flow as a deployment named after the suite, on `cron`: its parameter is the whole suite file as
    validated (the grid and every cell's settings), so a run needs no file where it runs."""
    from prefect.types.entrypoint import EntrypointType

    from coderflow.flows.suite import suite as suite_flow

    return suite_flow.to_deployment(
        name=safe_name(suite.suite.name),
        parameters={"spec": suite.model_dump(mode="json")},
        tags=["coderflow", "suite"],
        cron=cron,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"coderflow suite {suite.suite.name} from {suite.source} (served by `coderflow serve --suite`)",
    )


def deployments(
    cfg: PipelineConfig, name: str = "laptop", cron: str | None = DEFAULT_CRON, suite: SuiteFile | None = None
) -> list[Any]:
    """One deployment per flow; the end-to-end pipeline on `cron` (None: no schedule), the others on demand. With a
    suite, its deployment is on `cron` instead (see `suite_deployment`). Runs import their flow by module path
    (`coderflow.flows.pipeline.pipeline`), so an installed package serves too."""
    from prefect.types.entrypoint import EntrypointType

    flows = _flows()  # the pipeline's task runner comes from config.runner
    params = stage_parameters(cfg)
    tags = ["coderflow"]  # a run is tagged from the configuration it runs with (`tag_flow_run`), not the default
    served = [suite_deployment(suite, cron)] if suite is not None else []
    return served + [
        flow.to_deployment(
            name=name,
            parameters=params[key],
            tags=tags,
            cron=cron if key == "pipeline" and cron and suite is None else None,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"coderflow {key} on {cfg.dataset.name} with {cfg.model.name} (served by `coderflow serve`)",
        )
        for key, flow in flows.items()
    ]


def serve_flows(
    cfg: PipelineConfig,
    name: str = "laptop",
    cron: str | None = DEFAULT_CRON,
    limit: int = 1,
    suite: SuiteFile | None = None,
) -> None:
    """Serve every flow until interrupted (Ctrl-C); scheduled and UI-triggered runs execute in this process."""
    from prefect import serve

    serve(*deployments(cfg, name, cron, suite), limit=limit)
