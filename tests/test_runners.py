"""Task runners are configuration (threads and a 2-process Dask cluster give the same metrics); subflows share a heartbeat."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_demo_config
from prefect.task_runners import ThreadPoolTaskRunner

from coderflow.config import PipelineConfig
from coderflow.flows.runners import subflows_share_heartbeat, task_runner, with_runner
from coderflow.storage.db import query
from coderflow.storage.layout import Layout


def test_threads_are_the_default_and_keep_the_flow():
    from coderflow.flows.pipeline import pipeline

    assert with_runner(pipeline, PipelineConfig()) is pipeline
    runner = task_runner(PipelineConfig(runner_workers=3))
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3


def test_dask_at_an_address_starts_nothing():
    pytest.importorskip("prefect_dask")
    from prefect_dask import DaskTaskRunner

    runner = task_runner(PipelineConfig(runner="dask", runner_address="tcp://scheduler:8786"))
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://scheduler:8786"


def test_unknown_runner_is_refused():
    with pytest.raises(ValueError, match="runner"):
        PipelineConfig(runner="spark")


def test_subflows_of_a_decorated_flow_send_no_heartbeats(prefect_server):
    from prefect import flow
    from prefect.settings import get_current_settings

    @flow
    def child() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    def body() -> dict:
        return {"parent": get_current_settings().flows.heartbeat_frequency, "children": [child(), child()]}

    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None  # Prefect's default: every flow run sends heartbeats
    assert flow(body)() == {"parent": default, "children": [default, default]}
    shared = flow(subflows_share_heartbeat(body))()
    assert shared["children"] == [None, None]  # None: no heartbeat thread, nothing to join at the subflow's exit
    assert get_current_settings().flows.heartbeat_frequency == default  # the setting does not leak out


@pytest.mark.parametrize(
    "name", ["pipeline.pipeline", "fewshot.fewshot", "adapter.adapter_train", "adapter.adapter_overlap"]
)
def test_flows_with_subflows_share_their_heartbeat(name: str):
    import importlib

    module, attr = name.split(".")
    parent = getattr(importlib.import_module(f"coderflow.flows.{module}"), attr)
    assert getattr(parent.fn, "__wrapped__", None) is not None, f"{name} is not decorated with subflows_share_heartbeat"
    assert list(parent.parameters.properties) == ["config"]  # Prefect still sees the flow's own signature


def _metrics(workdir: Path) -> list[dict]:
    sql = "SELECT method, metric, class_index, value FROM metrics ORDER BY method, metric, class_index NULLS FIRST"
    return query(Layout.at(workdir), sql).to_pylist()


@pytest.mark.slow
@pytest.mark.flow
def test_dask_local_cluster_gives_the_same_metrics_as_threads(prefect_server, tmp_path: Path):
    pytest.importorskip("prefect_dask")
    from coderflow.flows.pipeline import pipeline
    from coderflow.flows.runners import close_local_clusters

    results = {}
    try:
        for runner in ("threads", "dask"):
            cfg = PipelineConfig(**tiny_demo_config(tmp_path / runner), runner=runner, runner_workers=2)
            out = with_runner(pipeline, cfg)(cfg)
            assert out.images.rows == 20 and out.images.shards == 2
            results[runner] = _metrics(tmp_path / runner)
    finally:
        close_local_clusters()
    assert results["threads"], "no metrics written"
    assert [r | {"value": None} for r in results["dask"]] == [r | {"value": None} for r in results["threads"]]
    for a, b in zip(results["dask"], results["threads"], strict=True):
        assert a["value"] == pytest.approx(b["value"], abs=1e-6)
