"""A copied or moved work directory answers queries from its own files; a missing one is refused, not created."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from coderflow.storage import db
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_rows
from coderflow.storage.schemas import METRICS

COUNT = "SELECT count(*) AS n, sum(value) AS total FROM metrics"


def _write_metrics(layout: Layout, run_id: str, values: list[float]) -> None:
    base = {"run_id": run_id, "dataset": "d", "split": "test", "model_id": "m", "method": "clip", "shots": None}
    rows = [{**base, "seed": None, "metric": "recall", "class_index": i, "value": v} for i, v in enumerate(values)]
    write_rows(rows, METRICS, layout.run_file(run_id, "metrics.parquet"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A tiny work directory: two runs' metrics (3 rows) and views built over it."""
    layout = Layout.at(tmp_path / "wd")
    _write_metrics(layout, "r1", [0.25, 0.5])
    _write_metrics(layout, "r2", [1.0])
    db.refresh_views(layout)
    assert db.query(layout, COUNT).to_pylist() == [{"n": 3, "total": 1.75}]
    return layout.root


def _views_root(layout: Layout) -> str | None:
    with duckdb.connect(str(layout.database), read_only=True) as con:
        return db.views_root(con)


@pytest.mark.parametrize("original", ["deleted", "renamed", "kept"])
def test_a_copied_work_directory_reads_its_own_files(workdir: Path, tmp_path: Path, original: str):
    copy = Layout.at(shutil.copytree(workdir, tmp_path / "copy", symlinks=True))
    assert _views_root(copy) == str(workdir)  # the copied database still names the original
    if original == "deleted":
        shutil.rmtree(workdir)
    elif original == "renamed":
        workdir.rename(tmp_path / "elsewhere")
    _write_metrics(copy, "r2", [10.0])  # the copy now differs from the original: its answer must show it

    assert db.query(copy, COUNT).to_pylist() == [{"n": 3, "total": 10.75}]
    assert _views_root(copy) == str(copy.root)
    with duckdb.connect(str(copy.database), read_only=True) as con:  # what the rebuilt view reads: the copy's files
        sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'metrics'").fetchone()[0]
    assert f"'{copy.root}/runs/" in sql and f"'{workdir}/" not in sql
    if original == "kept":  # the original still answers from its own files, views and all
        assert db.query(Layout.at(workdir), COUNT).to_pylist() == [{"n": 3, "total": 1.75}]


def test_a_moved_work_directory_reads_its_files(workdir: Path, tmp_path: Path):
    moved = Layout.at(shutil.move(workdir, tmp_path / "moved"))
    assert not workdir.exists()
    assert db.query(moved, COUNT).to_pylist() == [{"n": 3, "total": 1.75}]
    _write_metrics(moved, "r3", [2.0])  # a new run after the move, without a refresh by its writer
    db.refresh_views(moved)
    assert db.query(moved, COUNT).to_pylist() == [{"n": 4, "total": 3.75}]


def test_the_views_stay_absolute_for_other_duckdb_clients(workdir: Path):
    layout = Layout.at(workdir)
    with duckdb.connect(str(layout.database), read_only=True) as con:  # a plain DuckDB client, no coderflow
        assert con.execute("SELECT count(*) FROM metrics").fetchone() == (3,)
        assert con.execute("SELECT root FROM coderflow_root").fetchone() == (str(workdir),)
        sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'metrics'").fetchone()[0]
    assert f"'{workdir}/runs/" in sql


def test_a_database_without_the_root_record_is_rebuilt(workdir: Path):
    layout = Layout.at(workdir)
    with duckdb.connect(str(layout.database)) as con:  # as a database written by an older coderflow
        con.execute("DROP VIEW coderflow_root")
        con.execute("CREATE OR REPLACE VIEW metrics AS SELECT 1 AS stale")
    assert db.query(layout, COUNT).to_pylist() == [{"n": 3, "total": 1.75}]
    assert _views_root(layout) == str(workdir)


def test_a_url_work_directory_checks_the_root_of_its_cached_database(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = uuid.uuid4().hex[:8]
    first, second = Layout.at(f"memory://cf-{name}/a"), Layout.at(f"memory://cf-{name}/b")
    _write_metrics(first, "r1", [0.5])
    _write_metrics(second, "r1", [0.25, 0.25])
    db.refresh_views(first)
    assert first.database.is_file() and first.database.is_relative_to(tmp_path / "cache")
    # the cache holds first's database where second's belongs (a cache copied across): its views name `a`
    second.database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(first.database, second.database)
    assert db.query(second, COUNT).to_pylist() == [{"n": 2, "total": 0.5}]
    assert _views_root(second) == str(second.root)
    assert db.query(first, COUNT).to_pylist() == [{"n": 1, "total": 0.5}]


@pytest.mark.parametrize("kind", ["missing", "empty", "other"])
def test_a_directory_that_is_not_a_work_directory_is_refused(tmp_path: Path, kind: str):
    root = tmp_path / "nowhere"
    if kind != "missing":
        root.mkdir()
    if kind == "other":
        (root / "notes.txt").write_text("not coderflow's\n")
        (root / "embeddings").mkdir()
    message = (
        f"{root} is not a coderflow work directory (no shards/, runs/ or texts/ folder): pass --workdir of one, "
        "or run `coderflow demo` first"
    )
    with pytest.raises(db.QueryError) as err:
        db.query(Layout.at(root), "SELECT count(*) FROM metrics")
    assert str(err.value) == message and "\n" not in message
    if kind == "missing":
        assert not root.exists()  # a read creates nothing
    else:
        assert sorted(p.name for p in root.iterdir()) == (["embeddings", "notes.txt"] if kind == "other" else [])


def test_a_missing_url_work_directory_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    layout = Layout.at(f"memory://cf-{uuid.uuid4().hex[:8]}/none")
    with pytest.raises(db.QueryError, match="is not a coderflow work directory"):
        db.query(layout, "SELECT 1")
    assert not layout.database.exists() and not layout.root.exists()


def test_writes_are_still_refused_after_a_rebuild(workdir: Path, tmp_path: Path):
    copy = Layout.at(shutil.copytree(workdir, tmp_path / "copy"))
    with pytest.raises(db.QueryError, match="DROP statements are refused"):
        db.query(copy, "DROP VIEW metrics")
    with pytest.raises(db.QueryError, match="disabled by configuration"):
        db.query(copy, f"SELECT * FROM read_parquet('{workdir}/runs/*/metrics.parquet')")  # the original: outside
    assert db.query(copy, "SELECT count(*) AS n FROM metrics").to_pylist() == [{"n": 3}]
    assert pa.types.is_float64(db.query(copy, "SELECT value FROM metrics").schema.field("value").type)


def test_a_database_of_older_views_is_rebuilt_with_the_derived_views_and_macros(workdir: Path, tmp_path: Path):
    """A database whose views are of another version (no classes, coder_cosines, reference_results or macros) is
    rebuilt on the next query, and a moved work directory gets them too."""
    layout = Layout.at(workdir)
    with duckdb.connect(str(layout.database)) as con:  # as an older coderflow left it: version 1, no derived views
        con.execute(f"CREATE OR REPLACE VIEW {db.ROOT_VIEW} AS SELECT '{workdir}' AS root, 1 AS version")
        for name in ("classes", "coder_cosines"):
            con.execute(f"DROP VIEW IF EXISTS {name}")
        con.execute("DROP TABLE IF EXISTS reference_results")
    assert db.query(layout, "SELECT count(*) AS n FROM classes").to_pylist() == [{"n": 0}]  # rebuilt in place
    moved = Layout.at(shutil.move(str(workdir), str(tmp_path / "moved")))
    assert db.query(moved, "SELECT count(*) AS n FROM classes").to_pylist() == [{"n": 0}]
    assert db.query(moved, "SELECT count(*) AS n FROM coder_cosines").to_pylist() == [{"n": 0}]
    assert db.query(moved, "SELECT count(*) > 100 AS ok FROM reference_results").to_pylist() == [{"ok": True}]
    assert db.query(moved, COUNT).to_pylist() == [{"n": 3, "total": 1.75}]
    assert _views_root(moved) == str(moved.root)
