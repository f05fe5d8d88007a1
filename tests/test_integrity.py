"""Damaged stored files: hashes recorded and checked, damaged files moved aside and recomputed, views that skip
unreadable files, a damaged views database rebuilt, dead writers' temp files removed, and `coderflow doctor`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from cli_runner import run_cli

from coderflow.storage import db
from coderflow.storage.atomic import checksum_path, temp_prefix
from coderflow.storage.integrity import intact, problem, remove_dead_temp_files
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_rows, write_table
from coderflow.storage.schemas import METRICS


def flip(path: Path, n: int = 16) -> None:
    """Invert n bytes in the middle of a file, keeping its size (what a bad disk or a stray write does)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_a_written_file_records_its_hash_in_sha256sum_format(tmp_path: Path):
    target = write_table(pa.table({"a": list(range(100))}), tmp_path / "t.parquet")
    line = checksum_path(target).read_text()
    assert line == f"{hashlib.sha256(target.read_bytes()).hexdigest()}  t.parquet\n"
    check = subprocess.run(["sha256sum", "-c", checksum_path(target).name], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check.stdout
    assert problem(target) is None and intact(target)


def test_flipped_bytes_are_detected_and_the_file_moved_aside(tmp_path: Path, caplog):
    target = write_table(pa.table({"x": [float(i) for i in range(1000)]}), tmp_path / "e.parquet")
    flip(target)
    assert "differs" in problem(target)
    with caplog.at_level(logging.WARNING, logger="coderflow"):
        assert not intact(target)
    assert not target.exists() and not checksum_path(target).exists()
    assert (tmp_path / "e.parquet.damaged").is_file()
    assert "e.parquet is damaged" in caplog.text and "moved aside" in caplog.text


def test_a_file_without_a_recorded_hash_is_not_trusted(tmp_path: Path):
    target = write_table(pa.table({"a": [1]}), tmp_path / "t.parquet")
    checksum_path(target).unlink()  # as a file of unknown origin
    assert "no recorded content hash" in problem(target)
    assert not intact(target) and not target.exists()


def _metrics(run_id: str) -> list[dict]:
    return [{"run_id": run_id, "dataset": "d", "split": "test", "model_id": "m", "method": "clip",
             "metric": "top1", "value": 0.5}]  # fmt: skip


def test_the_views_skip_an_unreadable_file_and_name_it(tmp_path: Path, caplog):
    layout = Layout.at(tmp_path / "w")
    write_rows(_metrics("good"), METRICS, layout.run_file("good", "metrics.parquet"))
    bad = write_rows(_metrics("bad"), METRICS, layout.run_file("bad", "metrics.parquet"))
    bad.write_bytes(bad.read_bytes()[:-20])  # truncated: no footer
    with caplog.at_level(logging.WARNING, logger="coderflow"):
        db.refresh_views(layout)
    assert f"leaves out {bad}" in caplog.text
    rows = db.query(layout, "SELECT run_id FROM metrics").to_pylist()
    assert rows == [{"run_id": "good"}]


def test_a_damaged_views_database_is_rebuilt(tmp_path: Path):
    layout = Layout.at(tmp_path / "w")
    write_rows(_metrics("r1"), METRICS, layout.run_file("r1", "metrics.parquet"))
    db.refresh_views(layout)
    layout.database.write_bytes(b"\x00garbage" * 512)
    result = run_cli(["query", "SELECT count(*) AS n FROM metrics", "--workdir", layout.root, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"n": 1' in result.stdout


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path):
    layout = Layout.at(tmp_path / "w")
    folder = layout.root / "coder" / "m" / "b" / "d" / "test"
    folder.mkdir(parents=True)
    dead = folder / f"{temp_prefix('p.dense.parquet').replace(str(os.getpid()), str(_dead_pid()))}x1y2z3.tmp"
    live = folder / f"{temp_prefix('q.dense.parquet')}a1b2c3.tmp"
    dead_db = layout.root / f".coderflow.duckdb.{_dead_pid()}.140000.tmp"
    for path in (dead, live, dead_db):
        path.write_bytes(b"PAR1 half written")
    assert sorted(remove_dead_temp_files(layout)) == sorted([dead, dead_db])
    assert live.exists() and not dead.exists() and not dead_db.exists()


def _doctor(workdir: Path, *flags: str):
    return run_cli(["doctor", "--workdir", workdir, *flags])


@pytest.fixture
def broken(tmp_path: Path) -> dict:
    """A work directory with one problem of each kind doctor knows."""
    layout = Layout.at(tmp_path / "w")
    part = write_table(
        pa.table({"sample_key": ["a", "b"], "x": [1.0, 2.0]}),
        layout.image_embedding_part("m", "d", "test", "d-test-000000.tar", "0" * 64),
    )
    flip(part, 4)
    result = write_rows(_metrics("r1"), METRICS, layout.run_file("r1", "metrics.parquet"))
    flip(result, 4)
    marker = layout.shard_dir("d", "test") / "_ingest.json"
    marker.parent.mkdir(parents=True)
    marker.write_text('{"split_id": "abc", "shards": [')  # truncated
    temp = part.parent / f".{part.name}.pid{_dead_pid()}.k1ll3d.tmp"
    temp.write_bytes(b"half")
    layout.database.write_bytes(b"not a database")
    manifest = layout.run_file("r2", "manifest.json")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "run_id": "r2", "flow": "classify", "status": "running", "started_at": "2026-01-01T00:00:00+00:00",
        "process": {"host": socket.gethostname(), "pid": _dead_pid()}, "config": {},
    }))  # fmt: skip
    return {"root": layout.root, "part": part, "result": result, "marker": marker, "temp": temp, "manifest": manifest}


def test_doctor_lists_each_problem_in_one_line(broken):
    out = _doctor(broken["root"])
    assert out.exit_code == 1, out.output
    lines = out.stdout.splitlines()
    expect = {
        "damaged: embeddings/image/m/d/test/": "--fix moves it aside",
        "damaged: runs/r1/metrics.parquet": "not repairable here",
        "marker: shards/d/test/_ingest.json": "unreadable JSON",
        "temp: embeddings/image/m/d/test/.": "--fix removes it",
        "views: coderflow.duckdb": "--fix rebuilds it",
        "run: runs/r2/manifest.json": "--fix marks it crashed",
    }
    for start, says in expect.items():
        assert any(line.startswith(start) and says in line for line in lines), (start, out.stdout)
    assert lines[-1].endswith("6 problems, 0 fixed, 6 left")
    assert broken["part"].exists()  # without --fix nothing changes


def test_doctor_fix_repairs_what_it_can_and_keeps_results(broken):
    out = _doctor(broken["root"], "--fix")
    assert out.exit_code == 1, out.output  # the damaged run result is left for the user
    assert out.stdout.splitlines()[-1].endswith("6 problems, 5 fixed, 1 left")
    assert not broken["part"].exists() and broken["part"].with_name(broken["part"].name + ".damaged").exists()
    assert broken["result"].exists()  # a result it cannot recompute is never touched
    assert not broken["marker"].exists() and not broken["temp"].exists()
    assert json.loads(broken["manifest"].read_text())["status"] == "crashed"
    again = _doctor(broken["root"])
    assert again.stdout.splitlines() == [
        next(line for line in out.stdout.splitlines() if "runs/r1/metrics.parquet" in line),
        again.stdout.splitlines()[-1],
    ]
    assert again.stdout.splitlines()[-1].endswith("1 problems, 0 fixed, 1 left")


def test_doctor_refuses_what_is_no_work_directory(tmp_path: Path):
    out = _doctor(tmp_path / "nothing")
    assert out.exit_code == 2 and "not a coderflow work directory" in out.output


@pytest.mark.flow
@pytest.mark.slow
def test_damaged_derived_files_are_recomputed_and_a_damaged_old_result_blocks_nothing(demo_run, tmp_path: Path):
    """Flipped image-embedding, text-embedding, text-bank and CODER files are named, moved aside and computed again
    (the new run's predictions equal the clean run's); a truncated metrics file of an old run is left out of the
    views with a warning, and the new run's results land."""
    workdir = tmp_path / "work"
    shutil.copytree(demo_run["workdir"], workdir)
    layout = Layout.at(workdir)
    clean = demo_run["result"].run_id
    damaged = [
        sorted((workdir / "embeddings" / "image").rglob("*.parquet"))[0],
        sorted((workdir / "embeddings" / "text").rglob("*.parquet"))[0],
        sorted((workdir / "coder").rglob("*.parquet"))[0],
        layout.textbank_file(demo_run["result"].texts.textbank_id),
    ]
    for path in damaged:
        flip(path)
    old_metrics = layout.run_file(clean, "metrics.parquet")
    saved = old_metrics.read_bytes()
    old_metrics.write_bytes(saved[: len(saved) // 2])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(demo_run["config"].model_dump(mode="json", exclude={"workdir"})))

    out = run_cli(["run", "-c", config, "--workdir", workdir, "--force"])
    assert out.exit_code == 0, out.output
    for path in damaged:
        assert path.with_name(path.name + ".damaged").exists(), path
        assert problem(path) is None  # computed again, with its hash
    new = max((p.parent.name for p in layout.runs_dir.glob("*/metrics.parquet")), key=lambda r: r != clean)
    assert new != clean
    old_metrics.write_bytes(saved)  # the clean run's metrics, to compare with

    def preds(run_id: str) -> list:
        t = read_table(layout.run_file(run_id, "predictions.parquet"), ["method", "sample_key", "pred"])
        return sorted(zip(*(t[c].to_pylist() for c in t.column_names), strict=True))

    assert preds(new) == preds(clean)


def test_a_write_that_fails_to_publish_leaves_the_old_file_unverified_never_misnamed(tmp_path: Path, monkeypatch):
    """The hash is recorded before the file is published; if publishing then fails (a full disk at the rename), the
    new hash is dropped: the old file is never checked against the new content's hash, nor trusted without one."""
    import errno

    from coderflow.storage import atomic

    target = write_table(pa.table({"a": [1]}), tmp_path / "t.parquet")
    real = os.replace

    def full_at_publish(src, dst):
        if str(dst) == str(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full_at_publish)
    with pytest.raises(OSError, match="No space left"):
        write_table(pa.table({"a": [2]}), target)
    monkeypatch.undo()
    assert read_table(target)["a"].to_pylist() == [1]
    assert "no recorded content hash" in problem(target)
