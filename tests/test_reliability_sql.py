"""Reliability and security of `coderflow query`: read-only, no file access outside the work directory.

tests/test_storage.py covers CREATE/INSERT/COPY/ATTACH/SET and read_parquet outside the work directory; these are
the remaining ways to write, escape or reconfigure: other file readers, globbing, extensions, PRAGMA, writes hidden
after a SELECT, EXPLAIN ANALYZE of a write (which would run it), symlinks out of the work directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from cli_runner import run_cli

from coderflow.storage import db
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_table
from coderflow.storage.schemas import METRICS

DISABLED = "disabled by configuration"


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout.at(tmp_path / "w")
    row = {"run_id": "r1", "dataset": "d", "split": "test", "model_id": "m", "method": "clip", "shots": None}
    table = pa.Table.from_pylist([{**row, "seed": None, "metric": "top1", "class_index": None, "value": 0.5}], METRICS)
    write_table(table, layout.run_file("r1", "metrics.parquet"))
    db.refresh_views(layout)
    return layout


def _refused(layout: Layout, sql: str, message: str) -> None:
    with pytest.raises(db.QueryError, match=message):
        db.query(layout, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM read_json('/etc/hostname')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM glob('*')",
        "SELECT * FROM read_parquet('{root}/../outside.parquet')",
        "SELECT * FROM read_text('{root}/link-to-passwd')",
        "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        "SELECT * FROM duckdb_extensions()",
    ],
)
def test_reading_outside_the_work_directory_is_refused(layout: Layout, sql: str):
    (layout.root / "link-to-passwd").symlink_to("/etc/passwd")
    write_table(pa.table({"a": [1]}), layout.root.parent / "outside.parquet")
    _refused(layout, sql.format(root=layout.root), DISABLED)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSTALL httpfs", "LOAD statements are refused"),
        ("LOAD httpfs", "LOAD statements are refused"),
        ("PRAGMA enable_profiling", "PRAGMA statements are refused"),
        ("PRAGMA version", "PRAGMA statements are refused"),
        ("CALL pragma_version()", "CALL statements are refused"),
        ("CHECKPOINT", "CALL statements are refused"),
        ("RESET enable_external_access", "SET statements are refused"),
        ("USE memory", "SET statements are refused"),
        ("DETACH coderflow", "DETACH statements are refused"),
        ("VACUUM", "VACUUM statements are refused"),
        ("CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')", "CREATE statements are refused"),
        ("SELECT 1; DROP VIEW metrics", "DROP statements are refused"),
        ("SELECT 1; COPY (SELECT 1) TO '{root}/x.csv'", "COPY statements are refused"),
        ("SELECT 1;\n-- harmless?\nATTACH '{root}/other.db' AS o", "ATTACH statements are refused"),
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/x.csv'", "EXPLAIN of COPY is refused"),
        ("EXPLAIN COPY (SELECT 1) TO '{root}/x.csv'", "EXPLAIN of COPY is refused"),
        ("EXPLAIN /* c */ ANALYZE COPY (SELECT 1) TO '{root}/x.csv'", "EXPLAIN of an unrecognised statement"),
        ("EXPLAIN ANALYZE COPY metrics TO '{root}/runs/r1/metrics.parquet'", "EXPLAIN of COPY is refused"),
        ("SELECT * FROM query('COPY (SELECT 1) TO ''{root}/x.csv''')", "single SELECT"),
    ],
)
def test_writes_and_reconfiguration_are_refused(layout: Layout, sql: str, message: str):
    before = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*") if p.is_file()}
    _refused(layout, sql.format(root=layout.root), message)
    after = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten
    assert db.query(layout, "SELECT value FROM metrics")["value"].to_pylist() == [0.5]


@pytest.mark.parametrize(
    "sql",
    [
        "EXPLAIN SELECT * FROM metrics",
        "EXPLAIN ANALYZE SELECT * FROM metrics",
        "explain analyze with x as (select 1) select * from x",
        "EXPLAIN (FORMAT json) SELECT 1",
        "SUMMARIZE metrics",
        "DESCRIBE metrics",
        "SELECT * FROM query_table('metrics')",
        "SELECT count(*) FROM read_parquet('{root}/runs/*/metrics.parquet')",
    ],
)
def test_reading_questions_still_work(layout: Layout, sql: str):
    assert db.query(layout, sql.format(root=layout.root)).num_rows >= 1


def test_the_key_is_not_reachable_from_sql(layout: Layout, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-from-env")
    _refused(layout, "SELECT getenv('OPENAI_API_KEY')", "getenv")
    _refused(layout, "SELECT * FROM read_text('/proc/self/environ')", DISABLED)


def test_cli_refusals_are_one_line(layout: Layout):
    for sql, message in [
        ("SELECT 1; DROP VIEW metrics", "DROP statements are refused"),
        ("SELECT * FROM read_text('/etc/hostname')", DISABLED),
        (f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{layout.root}/x.csv'", "EXPLAIN of COPY is refused"),
    ]:
        result = run_cli(["query", sql, "--workdir", str(layout.root)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (layout.root / "x.csv").exists()


def test_csv_of_list_columns_multi_statements_and_a_time_limit(demo_run):
    work = str(demo_run["workdir"])
    out = run_cli(["query", "SELECT sample_key, top5 FROM predictions LIMIT 2", "--workdir", work, "--format", "csv"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.strip().splitlines()
    assert lines[0] == '"sample_key","top5"' and len(lines) == 3 and lines[1].count("[") == 1  # JSON lists
    out = run_cli(["query", "SELECT 1 AS a; SELECT 2 AS b", "--workdir", work, "--format", "json"])
    assert out.exit_code == 0 and json.loads(out.stdout) == [{"b": 2}], out.output  # the last statement's rows
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    out = run_cli(["query", endless, "--workdir", work, "--timeout", "1"])
    assert out.exit_code == 2 and "longer than 1 s" in out.output, out.output


def test_a_long_lived_reader_never_blocks_a_refresh(layout: Layout):
    """Another process holding the database open (a DuckDB client, a long query) does not make a run fail: the
    views are rebuilt in a new file renamed over the old one."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "c.execute('SELECT 1').fetchall(); print('open', flush=True); time.sleep(30)", str(layout.database)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        db.refresh_views(layout)  # raised "Could not set lock on file" while the reader held it
        db.refresh_views(layout)
        assert db.query(layout, "SELECT value FROM metrics").to_pylist() == [{"value": 0.5}]
        assert not [p for p in layout.database.parent.iterdir() if p.name.endswith(".tmp")]
    finally:
        holder.kill()
        holder.wait()
