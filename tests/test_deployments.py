"""Deployments and the Prefect UI: prefect.yaml and `serve` cover every flow with module entrypoints, runs are named
and tagged, task runs named after their shard, artifacts; a real server, `prefect deploy --all`, a worker, cron runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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
FLOWS = {"pipeline", "ingest-dataset", "embed-images", "text-bank", "import-texts", "build-coder", "classify"}
FLOWS |= {"few-shot", "train-adapter", "adapter-overlap"}


def _deployments() -> list[dict[str, Any]]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def test_prefect_yaml_has_one_deployment_per_flow_and_the_demo_parameters():
    from prefect.flows import load_flow_from_entrypoint

    assert (ROOT / "prefect.yaml").resolve() == PREFECT_YAML.resolve()  # `prefect deploy --all` from the root
    names = set()
    for d in _deployments():
        assert re.fullmatch(r"coderflow\.flows\.\w+:\w+", d["entrypoint"]), d["entrypoint"]  # a module, not a file
        flow = load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
        names.add(flow.name)
        assert d["work_pool"]["name"] == "coderflow"
        assert set(d["parameters"]) <= set(flow.parameters.properties), d["name"]
    assert names == FLOWS
    nightly = next(d for d in _deployments() if d["entrypoint"].endswith(":pipeline"))
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    # the pipeline's parameters are deployments/params/demo.yaml, and they validate; so do the other config flows'
    assert nightly["parameters"]["config"] == load_yaml(ROOT / "deployments" / "params" / "demo.yaml")
    for d in _deployments():
        if "config" in d["parameters"]:
            PipelineConfig(**d["parameters"]["config"])


def _serve_deployments(cron: str = "*/5 * * * *") -> dict[str, Any]:
    from coderflow.flows.serve import deployments

    return {d.flow_name: d for d in deployments(PipelineConfig(methods=("clip",)), cron=cron)}


def test_serve_builds_one_deployment_per_flow_with_a_cron_on_the_pipeline():
    from prefect.flows import load_flow_from_entrypoint

    deps = _serve_deployments()
    assert set(deps) == FLOWS
    assert [s.schedule.cron for s in deps["pipeline"].schedules] == ["*/5 * * * *"]
    assert all(not d.schedules for name, d in deps.items() if name != "pipeline")
    assert deps["pipeline"].parameters["config"]["methods"] == ["clip"]
    assert deps["pipeline"].tags == ["coderflow"]  # a run's dataset and model tags come from its own parameters
    for name in ("few-shot", "train-adapter", "adapter-overlap"):  # the whole config, as the pipeline
        assert deps[name].parameters == deps["pipeline"].parameters, name
    # what the config cannot hold is left to each run: the bank of build-coder/classify, the file of import-texts
    assert {"dataset", "model", "texts"} <= set(deps["import-texts"].parameters)
    assert not {"path", "fmt"} & set(deps["import-texts"].parameters)
    assert "textbank_id" not in deps["classify"].parameters
    for name, d in deps.items():  # runs import the flow from the installed package, wherever `serve` was started
        assert re.fullmatch(r"coderflow\.flows\.\w+\.\w+", d.entrypoint), d.entrypoint
        assert load_flow_from_entrypoint(d.entrypoint, use_placeholder_flow=False).name == name


@pytest.mark.flow
def test_a_deployment_run_is_tagged_from_the_configuration_it_ran_with(prefect_server, tmp_path: Path):
    """A run of a served deployment on another dataset is tagged `dataset:<that one>`, not the deployment's default
    (`dataset:demo`); dataset and model tags it inherited are replaced, the others kept."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from coderflow.flows.pipeline import ingest_dataset

    deployment_id = _serve_deployments()["ingest-dataset"].apply()
    dataset = {"name": "shapes", "kind": "demo", "demo_images_per_class": 1, "samples_per_shard": 10}
    with get_client(sync_client=True) as client:
        created = client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"dataset": dataset, "workdir": str(tmp_path)},
            tags=["dataset:demo", "model:ViT-S-32-alt", "mine"],  # as a deployment of the default config has them
        )
        run_flow(ingest_dataset, flow_run=client.read_flow_run(created.id))
        tags = set(client.read_flow_run(created.id).tags)
    assert "dataset:shapes" in tags and {"coderflow", "mine"} <= tags, tags
    assert not {"dataset:demo", "model:ViT-S-32-alt"} & tags, tags  # ingest-dataset has no model


def test_every_entrypoint_loads_from_the_installed_package_outside_the_checkout(tmp_path: Path):
    entrypoints = [d["entrypoint"] for d in _deployments()] + [d.entrypoint for d in _serve_deployments().values()]
    code = (
        "import sys\nfrom prefect.flows import load_flow_from_entrypoint\n"
        "print(' '.join(load_flow_from_entrypoint(e, use_placeholder_flow=False).name for e in sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *entrypoints], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == FLOWS


def test_run_names_and_tags_of_the_config_flows():
    from coderflow.flows.naming import describe_run, run_tags

    cfg = PipelineConfig(fewshot={"shots": (1, 2, 4)}, methods=("clip",))
    adapted = cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": "adapter-0123abcd"})})
    for params in ({"config": cfg}, {"config": cfg.model_dump(mode="json")}):  # a model, or JSON (deployment runs)
        assert describe_run(params, what="few-shot") == "few-shot demo ViT-S-32-alt 1,2,4-shot"
        assert describe_run(params, what="train-adapter") == "train-adapter demo/train ViT-S-32-alt"
        assert describe_run(params, with_methods=True) == "demo/test ViT-S-32-alt [clip]"
    assert (
        describe_run({"config": adapted}, what="adapter-overlap")
        == "adapter-overlap demo/test ViT-S-32-alt+adapter-0123abcd"
    )
    assert describe_run({"config": adapted}, what="train-adapter") == "train-adapter demo/train ViT-S-32-alt"
    assert run_tags({"config": adapted}) == ["dataset:demo", "model:ViT-S-32-alt", "adapter:adapter-0123abcd"]


def _flow_runs(client, **flt) -> list:
    from prefect.client.schemas.filters import FlowRunFilter

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(**flt))


def test_pipeline_run_names_task_runs_and_artifacts(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter

    from coderflow.storage.shards import split_shards

    result, cfg = demo_run["result"], demo_run["config"]
    shards = [s.name.split(".")[0] for s in split_shards(Layout.at(demo_run["workdir"]), "demo", "test")]
    assert len(shards) > 1
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result.flow_run_id)
        assert run.name == f"demo/test ViT-S-32-alt [{','.join(cfg.methods)}]"
        assert {"dataset:demo", "model:ViT-S-32-alt"} <= set(run.tags)
        children = {
            client.read_flow(r.flow_id).name: r for r in _flow_runs(client, parent_flow_run_id={"any_": [run.id]})
        }

        def task_run_names(flow_run) -> set[str]:
            found = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
            return {t.name for t in found}

        # task runs named after the shard they work on
        assert {f"embed-shard {s}" for s in shards} <= task_run_names(children["embed-images"])
        assert {f"build-coder-shard {s}" for s in shards} <= task_run_names(children["build-coder"])
        assert "ingest-split demo/test" in task_run_names(children["ingest-dataset"])

        # the parent run publishes the metrics table, under a key of its own (classify keeps `metrics-demo`)
        own = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [run.id]}))
        tables = [a for a in own if a.type == "table"]
        assert [a.key for a in tables] == ["pipeline-metrics-demo"]
        shown = {row["method"] for row in json.loads(tables[0].data)}  # the API keeps JSON text
        assert shown == set(cfg.methods) - {"cupl"}  # cupl is left out: the demo bank has no CuPL sentence
        flt = ArtifactFilter(flow_run_id={"any_": [children["classify"].id]})
        assert "metrics-demo" in {a.key for a in client.read_artifacts(artifact_filter=flt)}

        # each embedded shard's progress artifact ends at 100% with its images/s
        flt = ArtifactFilter(flow_run_id={"any_": [children["embed-images"].id]}, type={"any_": ["progress"]})
        progress = {a.description: a.data for a in client.read_artifacts(artifact_filter=flt)}
        per_shard = {
            d: v
            for d, v in progress.items()
            if re.fullmatch(r"embed demo-test-\d{6}: (\d+) of \1 images, [\d.]+ images/s", d)
        }
        assert len(per_shard) == len(shards) and set(per_shard.values()) == {100.0}, progress


def test_embedding_progress_moves_per_batch_at_most_every_interval(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    from coderflow.tasks.embed.task import BatchProgress

    now = [0.0]

    @flow
    def batches() -> list[tuple[float, str]]:
        progress = BatchProgress("embed s-000001", total=100, every=2.0, clock=lambda: now[0])

        def shown() -> tuple[float, str]:
            with get_client(sync_client=True) as client:
                art = client.read_artifacts(artifact_filter=ArtifactFilter(id={"any_": [progress.artifact_id]}))[0]
            return art.data, art.description

        seen = [shown()]
        for t, n in ((1.0, 20), (2.5, 30), (4.0, 25)):  # batches of 20, 30 and 25 images at these seconds
            now[0] = t
            progress(n)
            seen.append(shown())
        now[0] = 5.0
        progress.finish()
        return [*seen, shown()]

    assert batches() == [
        (0.0, "embed s-000001: 0 of 100 images, 0.0 images/s"),
        (0.0, "embed s-000001: 0 of 100 images, 0.0 images/s"),  # within 2 s of the last update: no API call
        (50.0, "embed s-000001: 50 of 100 images, 20.0 images/s"),
        (50.0, "embed s-000001: 50 of 100 images, 20.0 images/s"),
        (100.0, "embed s-000001: 75 of 75 images, 15.0 images/s"),  # done: all the shard held
    ]


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
        key = ArtifactFilterKey(any_=["pipeline-metrics-demo"])
        parent = client.read_artifacts(artifact_filter=ArtifactFilter(key=key))
        assert [a.flow_run_id for a in parent] == [run.id] and "clip" in str(parent[0].data)
        progress = [a for a in client.read_artifacts() if a.type == "progress"]
        assert progress and progress[0].data == 100.0

    # the results are in DuckDB
    layout = Layout.at(workdir)
    rows = query(layout, "SELECT method, count(*) AS n FROM predictions GROUP BY method").to_pylist()
    assert rows == [{"method": "clip", "n": 20}]
    top1 = query(layout, "SELECT value FROM metrics WHERE metric = 'top1' AND class_index IS NULL").to_pylist()
    assert len(top1) == 1 and 0 <= top1[0]["value"] <= 1
    assert query(layout, "SELECT status FROM runs").to_pylist() == [{"status": "completed"}]
