"""Task runners are configuration: threads and a 2-process Dask cluster give the same metrics on the tiny demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_demo_config
from prefect.task_runners import ThreadPoolTaskRunner

from coderflow.config import PipelineConfig
from coderflow.flows.runners import task_runner, with_runner
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
            assert out["images"]["rows"] == 20 and out["images"]["shards"] == 2
            results[runner] = _metrics(tmp_path / runner)
    finally:
        close_local_clusters()
    assert results["threads"], "no metrics written"
    assert [r | {"value": None} for r in results["dask"]] == [r | {"value": None} for r in results["threads"]]
    for a, b in zip(results["dask"], results["threads"], strict=True):
        assert a["value"] == pytest.approx(b["value"], abs=1e-6)
