"""Deployments: prefect.yaml matches the parameter files; a real server, `prefect deploy --all`, a worker, cron runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_demo_config

from coderflow.config import PipelineConfig, load_yaml
from coderflow.storage.db import query
from coderflow.storage.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
FLOWS = {"pipeline", "ingest-dataset", "embed-images", "text-bank", "build-coder", "classify"}


def _deployments() -> list[dict[str, Any]]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def test_prefect_yaml_has_one_deployment_per_flow_and_the_demo_parameters():
    from prefect.flows import load_flow_from_entrypoint

    assert (ROOT / "prefect.yaml").resolve() == PREFECT_YAML.resolve()  # `prefect deploy --all` from the root
    names = set()
    for d in _deployments():
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        names.add(flow.name)
        assert d["work_pool"]["name"] == "coderflow"
        assert set(d["parameters"]) <= set(flow.parameters.properties), d["name"]
    assert names == FLOWS
    nightly = next(d for d in _deployments() if d["entrypoint"].endswith(":pipeline"))
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    # the pipeline's parameters are deployments/params/demo.yaml, and they validate
    assert nightly["parameters"]["config"] == load_yaml(ROOT / "deployments" / "params" / "demo.yaml")
    PipelineConfig(**nightly["parameters"]["config"])


def test_serve_builds_one_deployment_per_flow_with_a_cron_on_the_pipeline():
    from coderflow.flows.serve import deployments

    deps = {d.flow_name: d for d in deployments(PipelineConfig(methods=("clip",)), cron="*/5 * * * *")}
    assert set(deps) == FLOWS
    assert [s.schedule.cron for s in deps["pipeline"].schedules] == ["*/5 * * * *"]
    assert all(not d.schedules for name, d in deps.items() if name != "pipeline")
    assert deps["pipeline"].parameters["config"]["methods"] == ["clip"]
    assert "dataset:demo" in deps["pipeline"].tags


def _api(server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: server.api_url})


def _wait_for_final_state(server, flow_run_id, worker, timeout: float = 420) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with _api(server), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                break
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                state = run.state.name if run.state else None
                pytest.fail(f"flow run {flow_run_id} not finished in {timeout:.0f} s (state {state}); worker log:\n"
                            f"{worker.tail(80)}")  # fmt: skip
            time.sleep(2)
    if not run.state.is_completed():
        pytest.fail(f"flow run ended {run.state.name}: {run.state.message}\nworker log:\n{worker.tail(120)}")
    return run


@pytest.mark.slow
@pytest.mark.flow
def test_deploy_all_schedule_and_worker_run(prefect_cli_server, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, DeploymentFilter, FlowRunFilter
    from prefect.deployments import run_deployment

    server = prefect_cli_server
    server.run("work-pool", "create", "coderflow", "--type", "process", "--overwrite")
    server.run("deploy", "--all")  # ./prefect.yaml -> deployments/prefect.yaml

    with _api(server), get_client(sync_client=True) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        assert set(deployments) == {"pipeline/demo-nightly"} | {f"{f}/demo" for f in FLOWS - {"pipeline"}}
        # the cron schedule makes the scheduler service create scheduled runs (sqlalchemy < 2.1 matters here)
        nightly = deployments["pipeline/demo-nightly"]
        deadline = time.monotonic() + 60
        scheduled: list = []
        while not scheduled and time.monotonic() < deadline:
            flt = DeploymentFilter(id={"any_": [nightly.id]})
            scheduled = [r for r in client.read_flow_runs(deployment_filter=flt) if r.state and r.state.is_scheduled()]
            time.sleep(1)
        assert scheduled, f"no scheduled runs from the cron schedule; server log:\n{server.process.tail()}"
        assert all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 0 for r in scheduled)

    worker = server.start("worker", "worker", "start", "--pool", "coderflow", "--type", "process", "--limit", "1")
    workdir = tmp_path / "work"
    with _api(server):
        started = run_deployment(
            "pipeline/demo-nightly", parameters={"config": tiny_demo_config(workdir)}, timeout=0
        )  # fmt: skip
    run = _wait_for_final_state(server, started.id, worker)

    # named and tagged after what it works on; the sub-flows too
    assert run.name == "demo/test ViT-S-32-alt [clip]"
    assert {"dataset:demo", "model:ViT-S-32-alt", "nightly"} <= set(run.tags)
    with _api(server), get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [run.id]}))
        names = {client.read_flow(r.flow_id).name: r.name for r in children}
        assert names["embed-images"] == "demo/test ViT-S-32-alt" and names["ingest-dataset"] == "demo/test"
        metrics = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["metrics-demo"])))
        assert metrics and metrics[0].type == "table" and "clip" in str(metrics[0].data)
        progress = [a for a in client.read_artifacts() if a.type == "progress"]
        assert progress and progress[0].data == 100.0

    # the results are in DuckDB
    layout = Layout.at(workdir)
    rows = query(layout, "SELECT method, count(*) AS n FROM predictions GROUP BY method").to_pylist()
    assert rows == [{"method": "clip", "n": 20}]
    top1 = query(layout, "SELECT value FROM metrics WHERE metric = 'top1' AND class_index IS NULL").to_pylist()
    assert len(top1) == 1 and 0 <= top1[0]["value"] <= 1
    assert query(layout, "SELECT status FROM runs").to_pylist() == [{"status": "completed"}]
