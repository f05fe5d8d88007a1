"""Storage: layout names, atomic writes, shard writing/reading, class-list validation, DuckDB guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from coderflow.storage import db
from coderflow.storage.layout import Layout, content_id, model_id, safe_name
from coderflow.storage.parquet_io import ROW_GROUP_ROWS, read_table, write_stream, write_table
from coderflow.storage.schemas import METRICS, list_array
from coderflow.storage.shards import ingest_info, iter_samples, list_shards, validate_classnames, write_split


def test_safe_name_and_ids():
    assert safe_name("hf-hub:org/model name") == "hf-hub-org-model-name"
    with pytest.raises(ValueError, match="path component"):
        safe_name("///")
    assert content_id("a", "bc") != content_id("ab", "c")  # parts are length-prefixed
    assert model_id("ViT-B-32", None) == "ViT-B-32__random"
    assert model_id("ViT-B-32", "openai") == "ViT-B-32__openai"


def test_model_id_of_a_file_is_its_content(tmp_path: Path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")
    assert model_id("RN50", str(a)) == model_id("RN50", str(b))
    assert model_id("RN50", str(a)).startswith("RN50__file-")
    b.write_bytes(b"weights-2")
    assert model_id("RN50", str(a)) != model_id("RN50", str(b))


def test_workdir_from_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CODERFLOW_HOME", str(tmp_path / "w"))
    assert Layout.at().root == (tmp_path / "w").resolve()
    assert Layout.at(tmp_path / "x").root == (tmp_path / "x").resolve()


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "t.parquet"
    write_table(pa.table({"a": [1]}), target)
    bad = pa.table({"a": ["not-an-int"]})
    with pytest.raises(pa.ArrowInvalid):
        write_table(bad, target, pa.schema([("a", pa.int64())]))
    assert read_table(target)["a"].to_pylist() == [1]  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "t.parquet.sha256"]  # no temp file left


def test_write_stream_types_row_groups_and_a_failing_producer(tmp_path: Path):
    import duckdb
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("vector", pa.list_(pa.float32())), ("top", pa.list_(pa.int32()))])
    target = tmp_path / "c.parquet"
    rows = [{"key": f"k{i}", "vector": [i, -i], "top": [i]} for i in range(ROW_GROUP_ROWS + 10)]
    batches = [pa.Table.from_pylist(rows[i : i + 700]) for i in range(0, len(rows), 700)]  # int64 lists: cast
    assert write_stream(iter(batches), schema, target) == len(rows)
    back = read_table(target)
    assert back.schema.equals(schema)  # not the large_* types the encoder stores
    assert back.to_pylist() == pa.Table.from_pylist(rows, schema).to_pylist()
    assert pq.ParquetFile(target).metadata.num_row_groups == 2  # ROW_GROUP_ROWS bounds what is buffered
    got = duckdb.sql(f"SELECT typeof(vector), vector[2] FROM '{target}' WHERE key = 'k3'").fetchall()
    assert got == [("FLOAT[]", -3.0)]

    def fails_midway():
        yield batches[0]
        raise KeyError("bad batch")

    with pytest.raises(KeyError, match="bad batch"):  # the producer's own error, not the encoder's wrapper
        write_stream(fails_midway(), schema, target)
    assert read_table(target).num_rows == len(rows) and sorted(p.name for p in tmp_path.iterdir()) == [
        "c.parquet",
        "c.parquet.sha256",
    ]
    assert write_stream(iter([]), schema, tmp_path / "empty.parquet") == 0
    assert read_table(tmp_path / "empty.parquet").schema.equals(schema)


def test_write_stream_from_two_threads_at_once(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    schema = pa.schema([("i", pa.int32()), ("v", pa.list_(pa.float32()))])

    def write(n: int) -> int:
        batches = (pa.table({"i": [n] * 500, "v": [[float(n)] * 64] * 500}) for _ in range(8))
        return write_stream(batches, schema, tmp_path / f"{n}.parquet")

    with ThreadPoolExecutor(2) as pool:  # as the thread runner maps two shards
        assert list(pool.map(write, range(4))) == [4000] * 4
    for n in range(4):
        assert set(read_table(tmp_path / f"{n}.parquet")["i"].to_pylist()) == {n}


def test_list_array_rows_and_null_rows():
    m = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert list_array(m, pa.float32()).to_pylist() == [[0, 1], [2, 3], [4, 5]]
    with_nulls = list_array(m, pa.float32(), np.array([True, False, True, True, False]))
    assert with_nulls.to_pylist() == [[0, 1], None, [2, 3], [4, 5], None] and with_nulls.type == pa.list_(pa.float32())
    assert list_array(m[:0], pa.float32(), np.array([False])).to_pylist() == [None]


def test_write_split_roundtrip_and_replace(tmp_path: Path):
    shard_dir = tmp_path / "shards" / "x" / "test"
    samples = [{"__key__": f"k{i}", "png": b"img%d" % i, "cls": i % 2, "json": {"i": i}} for i in range(5)]
    shards = write_split(iter(samples), shard_dir, "x-%06d.tar", 2, {"kind": "t"})
    assert [p.name for p in shards] == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]
    got = [s for sh in shards for s in iter_samples(sh)]
    assert [s["__key__"] for s in got] == [f"k{i}" for i in range(5)]
    assert got[3]["png"] == b"img3" and got[3]["cls"] == b"1"
    assert ingest_info(shard_dir)["samples"] == 5
    # a second ingest replaces the split as a whole
    write_split(iter(samples[:1]), shard_dir, "x-%06d.tar", 2, {"kind": "t"})
    assert len(list_shards(shard_dir)) == 1
    assert sorted(p.name for p in shard_dir.parent.iterdir()) == ["test"]


def test_write_split_failure_keeps_previous(tmp_path: Path):
    shard_dir = tmp_path / "s"
    write_split(iter([{"__key__": "a", "png": b"1", "cls": 0}]), shard_dir, "p-%06d.tar", 10, {})

    def broken():
        yield {"__key__": "b", "png": b"2", "cls": 0}
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_split(broken(), shard_dir, "p-%06d.tar", 10, {})
    assert [s["__key__"] for s in iter_samples(list_shards(shard_dir)[0])] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "empty"), (["a", " ", "b"], "class 1 has an empty name"), (["a", "b", "a"], "'a' appears twice")],
)
def test_validate_classnames(names, message):
    with pytest.raises(ValueError, match=message):
        validate_classnames(names, "classnames.txt")


def _metrics_file(layout: Layout) -> None:
    row = {"run_id": "r1", "dataset": "d", "split": "test", "model_id": "m", "method": "clip", "shots": None}
    table = pa.Table.from_pylist([{**row, "seed": None, "metric": "top1", "class_index": None, "value": 0.5}], METRICS)
    write_table(table, layout.run_file("r1", "metrics.parquet"))


def test_views_exist_before_any_data(tmp_path: Path):
    (tmp_path / "runs").mkdir()  # a work directory with no results yet
    layout = Layout.at(tmp_path)
    out = db.query(layout, "SELECT count(*) AS n FROM predictions")
    assert out["n"].to_pylist() == [0]
    cols = db.query(layout, "SELECT * FROM metrics").column_names
    assert cols == METRICS.names


def test_query_reads_views_and_refuses_writes(tmp_path: Path):
    layout = Layout.at(tmp_path)
    _metrics_file(layout)
    db.refresh_views(layout)
    assert db.query(layout, "SELECT value FROM metrics WHERE metric = 'top1'")["value"].to_pylist() == [0.5]
    outside = tmp_path.parent / "outside.parquet"
    write_table(pa.table({"a": [1]}), outside)
    refused = {
        "CREATE TABLE t (a INT)": "CREATE statements are refused",
        "INSERT INTO metrics VALUES (1)": "INSERT statements are refused",
        f"COPY (SELECT 1) TO '{tmp_path}/x.csv'": "COPY statements are refused",
        f"ATTACH '{tmp_path}/other.db'": "ATTACH statements are refused",
        "SET enable_external_access = true": "SET statements are refused",
        f"SELECT * FROM read_parquet('{outside}')": "disabled by configuration",
        "SELEC 1": "could not parse",
        "SELECT nope FROM metrics": "nope",
        "": "empty",
    }
    for sql, message in refused.items():
        with pytest.raises(db.QueryError, match=message):
            db.query(layout, sql)
    assert not (tmp_path / "x.csv").exists()


def test_canned_sql_files_exist():
    for name in ("accuracy_per_method", "per_class_recall", "confused_pairs"):
        assert "SELECT" in db.sql_file(name)
    with pytest.raises(db.QueryError, match="choose one of"):
        db.sql_file("nope")


def test_files_and_split_folders_follow_the_umask(tmp_path: Path):
    """Written files and ingested split folders get the permissions the umask allows (not tempfile's 0600/0700), so
    a work directory shared with other users or workers stays readable."""
    import subprocess
    import sys

    script = (
        "import os, sys; os.umask(0o022)\n"
        "from coderflow.storage.atomic import write_text\n"
        "from coderflow.storage.shards import write_split\n"
        "from coderflow.tasks.ingest.sources import demo_source\n"
        "root = sys.argv[1]\n"
        "write_text('x', root + '/a/file.txt')\n"
        "src = demo_source(1, 16)\n"
        "write_split(src.samples, __import__('pathlib').Path(root) / 'shards' / 'test', '%06d.tar', 5, src.info)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "file.txt").stat().st_mode & 0o777 == 0o644
    split = tmp_path / "shards" / "test"
    assert split.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in split.iterdir() if p.is_file())


def test_runs_abandoned_by_a_dead_process_are_marked_crashed(tmp_path: Path):
    """A run recorded as running by a process of this host that no longer exists becomes `crashed`; a live one and
    another host's are left running."""
    import json
    import subprocess
    import sys
    from datetime import UTC, datetime

    from coderflow.storage.db import query
    from coderflow.storage.runs import mark_abandoned, write_run

    layout = Layout.at(tmp_path / "w")
    script = (
        "import sys; from datetime import UTC, datetime\n"
        "from coderflow.storage.layout import Layout\n"
        "from coderflow.storage.runs import write_run\n"
        "write_run(Layout.at(sys.argv[1]), 'dead', flow='classify', status='running', started_at=datetime.now(UTC),"
        " config={'methods': ['clip']})\n"
    )
    subprocess.run([sys.executable, "-c", script, str(layout.root)], check=True)  # that process has exited
    now = datetime.now(UTC)
    write_run(layout, "alive", flow="classify", status="running", started_at=now, config={})  # this process
    write_run(layout, "elsewhere", flow="classify", status="running", started_at=now, config={})
    manifest = layout.run_file("elsewhere", "manifest.json")
    data = json.loads(manifest.read_text())
    data["process"]["host"] = "another-host"
    manifest.write_text(json.dumps(data))
    assert mark_abandoned(layout) == ["dead"]
    rows = query(layout, "SELECT run_id, status FROM runs ORDER BY run_id").to_pylist()
    assert rows == [
        {"run_id": "alive", "status": "running"}, {"run_id": "dead", "status": "crashed"},
        {"run_id": "elsewhere", "status": "running"},
    ]  # fmt: skip
    assert json.loads(layout.run_file("dead", "manifest.json").read_text())["config"] == {"methods": ["clip"]}
    assert mark_abandoned(layout) == []
