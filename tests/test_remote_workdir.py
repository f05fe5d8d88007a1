"""A work directory at an fsspec URL: storage on memory://, and the pipeline on s3:// (a local S3 HTTP server)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from conftest import tiny_demo_config
from moto_s3 import moto_s3

from coderflow.config import PipelineConfig
from coderflow.flows.uptodate import check_inputs
from coderflow.storage import atomic, db, integrity, parquet_io, shards
from coderflow.storage.layout import Layout, is_local, resolve_workdir, storage_path
from coderflow.storage.schemas import VIEWS

# --- storage on an in-process fsspec file system (memory://): fast, no server -----------------------------------


def _metric_row(value: float) -> dict:
    row = dict.fromkeys(VIEWS["metrics"].names)
    return (
        row
        | {"run_id": "r1", "dataset": "d", "split": "test", "model_id": "m", "method": "clip"}
        | {
            "metric": "top1",
            "value": value,
        }
    )


@pytest.fixture
def memory_layout(tmp_path, monkeypatch) -> Layout:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return Layout.at(f"memory://cf-{uuid.uuid4().hex[:8]}/wd")


def test_urls_stay_urls_and_file_urls_are_local_paths(tmp_path):
    assert resolve_workdir("s3://bucket/runs").protocol == "s3"
    assert str(resolve_workdir("s3://bucket/runs") / "texts") == "s3://bucket/runs/texts"
    assert resolve_workdir(f"file://{tmp_path}") == tmp_path and is_local(resolve_workdir(f"file://{tmp_path}"))
    assert storage_path("relative/dir") == Path("relative/dir")
    with pytest.raises(ValueError, match=r"cannot use 'nosuch://bucket/x'.*pip install"):
        resolve_workdir("nosuch://bucket/x")


def test_parquet_and_text_files_round_trip_at_a_url(memory_layout):
    target = memory_layout.run_file("r1", "metrics.parquet")
    parquet_io.write_rows([_metric_row(0.5)], VIEWS["metrics"], target)
    parquet_io.write_rows([_metric_row(0.75)], VIEWS["metrics"], target)  # replaced, not appended
    assert parquet_io.read_table(str(target), ["value"]).column("value").to_pylist() == [0.75]
    atomic.write_text("bank-1", memory_layout.textbank_alias("d"))
    assert memory_layout.textbank_alias("d").read_text() == "bank-1"
    names = sorted(p.name for p in memory_layout.run_dir("r1").iterdir())
    assert names == ["metrics.parquet", "metrics.parquet.sha256"]  # no temp left; the hash of the last version
    assert integrity.problem(target) is None


def test_a_failed_write_at_a_url_leaves_the_old_file(memory_layout):
    target = memory_layout.run_file("r1", "metrics.parquet")
    parquet_io.write_rows([_metric_row(0.5)], VIEWS["metrics"], target)
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("killed while writing")
    assert parquet_io.read_table(target)["value"].to_pylist() == [0.5]


def test_a_split_at_a_url_is_replaced_whole(memory_layout):
    shard_dir = memory_layout.shard_dir("d", "test")
    samples = [{"__key__": f"k{i}", "png": b"x", "cls": i % 2, "json": {}} for i in range(5)]
    written = shards.write_split(samples, shard_dir, "d-test-%06d.tar", 2, {"source": "a"})
    assert [p.name for p in written] == [f"d-test-00000{i}.tar" for i in range(3)]
    assert [s["__key__"] for p in written for s in shards.iter_samples(p)] == [f"k{i}" for i in range(5)]
    again = shards.write_split(samples[:3], shard_dir, "d-test-%06d.tar", 2, {"source": "b"})
    info = shards.ingest_info(shard_dir)
    assert len(again) == 2 and {k: info[k] for k in ("source", "samples")} == {"source": "b", "samples": 3}
    assert [s["name"] for s in info["shards"]] == [p.name for p in again] and info["split_id"]
    missing = shards.iter_samples(str(shard_dir / "gone.tar"))
    assert "cannot be opened" in shards.sample_error(next(missing))


def test_sql_over_a_url_work_directory_is_read_only_and_confined(memory_layout):
    parquet_io.write_rows([_metric_row(0.5)], VIEWS["metrics"], memory_layout.run_file("r1", "metrics.parquet"))
    db.refresh_views(memory_layout)
    assert memory_layout.database.is_file() and is_local(memory_layout.database)  # DuckDB's file stays local
    assert db.query(memory_layout, "SELECT value FROM metrics").column("value").to_pylist() == [0.5]
    with pytest.raises(db.QueryError, match="disabled"):
        db.query(memory_layout, "SELECT * FROM read_csv('/etc/hostname')")
    with pytest.raises(db.QueryError, match="read-only"):
        db.query(memory_layout, "COPY (SELECT 1) TO 'memory://elsewhere/x.csv'")


# --- the pipeline on s3:// against a local S3-compatible server (moto) -------------------------------------------


@pytest.fixture(scope="module")
def s3_bucket(tmp_path_factory):
    """A bucket on a local S3 HTTP server (tests/moto_s3.py)."""
    with moto_s3(tmp_path_factory.mktemp("xdg-cache"), "s3-secret-Xq9z") as fs:
        bucket = f"coderflow-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        yield bucket, fs


def _metrics(workdir: str) -> list[dict]:
    sql = "SELECT method, metric, class_index, value FROM metrics ORDER BY method, metric, class_index NULLS FIRST"
    return db.query(Layout.at(workdir), sql).to_pylist()


@pytest.mark.slow
@pytest.mark.flow
def test_dask_workers_on_an_s3_work_directory_match_a_local_threads_run(
    prefect_server, s3_bucket, tmp_path: Path, monkeypatch
):
    """Two Dask worker processes share nothing but the bucket, and give the local run's metrics."""
    pytest.importorskip("prefect_dask")
    from coderflow.flows.pipeline import pipeline
    from coderflow.flows.runners import close_local_clusters, with_runner

    bucket, fs = s3_bucket
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a relative path would show up here as a folder
    local = PipelineConfig(**tiny_demo_config(tmp_path / "local"))
    pipeline(local)
    remote_dir = f"s3://{bucket}/runs/demo"
    remote = PipelineConfig(**(tiny_demo_config(tmp_path) | {"workdir": remote_dir}), runner="dask", runner_workers=2)
    try:
        out = with_runner(pipeline, remote)(remote)
    finally:
        close_local_clusters()
    assert out.images.rows == 20 and out.images.shards == 2
    stored = fs.find(f"{bucket}/runs/demo")
    for folder in ("shards/demo/test", "embeddings/image", "embeddings/text", "texts", "coder", "runs"):
        assert any(f"/runs/demo/{folder}/" in p for p in stored), f"nothing stored under {folder}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"], "the s3 run wrote to the local disk"
    expected, got = _metrics(str(tmp_path / "local")), _metrics(remote_dir)
    assert expected and [r | {"value": None} for r in got] == [r | {"value": None} for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["value"] == pytest.approx(b["value"], abs=1e-6)
    verdict = check_inputs(remote)  # the up-to-date check reads the bucket too
    assert verdict.up_to_date and verdict.run_id == out.run_id
    assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in fs.cat(
        f"{bucket}/runs/demo/runs/{out.run_id}/manifest.json"
    )
