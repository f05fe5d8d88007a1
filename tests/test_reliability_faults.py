"""Faults: a disk that fills up mid-write, and the process killed (SIGKILL) while embedding or generating texts.

What must hold: no half-written file is ever read (temp files are `.<name>.*.tmp` beside the target and no glob that
feeds a view or a loader matches them), a finished shard is not redone on re-run, the final tables hold exactly one
row per sample, and LLM replies that were paid for before the kill are not requested again.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from cli_runner import run_cli
from fake_openai import API_KEY, FakeOpenAI, error, structured

from coderflow.storage import atomic, db
from coderflow.storage.arrays import load_images
from coderflow.storage.atomic import write_text
from coderflow.storage.integrity import problem
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_stream, write_table
from coderflow.storage.schemas import IMAGE_EMBEDDINGS, METRICS
from coderflow.storage.shards import list_shards, write_split

CLI = str(Path(sys.executable).with_name("coderflow"))
MODEL_ID = "ViT-S-32-alt__random"


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# disk full ------------------------------------------------------------------------------------------------
def test_disk_full_in_parquet_write_leaves_no_partial_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "t.parquet"
    write_table(pa.table({"a": [1]}), target)

    def half_then_full(self, where, **kw):  # write some bytes, then fail like a full disk
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", half_then_full)
    with pytest.raises(OSError, match=re.escape(f"could not write {target}: No space left on device")) as info:
        write_table(pa.table({"a": [2]}), target)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert _only(tmp_path) == ["t.parquet", "t.parquet.sha256"] and read_table(target)["a"].to_pylist() == [1]
    assert problem(target) is None  # the recorded hash is still the old file's


def test_disk_full_on_rename_leaves_no_partial_file(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(atomic.os, "replace", _enospc)
    with pytest.raises(OSError, match="No space left on device"):
        write_text("manifest", tmp_path / "manifest.json")
    assert _only(tmp_path) == []


def test_disk_full_mid_stream_leaves_no_partial_file(tmp_path: Path, monkeypatch):
    schema = pa.schema([("a", pa.int64())])
    real = pl.LazyFrame.sink_parquet

    def rows_then_full(self, where, **kw):  # the encoder wrote its row groups, then the disk filled up
        real(self, where, **kw)
        assert Path(where).stat().st_size > 0
        _enospc()

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", rows_then_full)
    with pytest.raises(OSError, match=r"could not write .*coder\.parquet: No space left"):
        write_stream((pa.table({"a": [i]}) for i in range(3)), schema, tmp_path / "coder.parquet")
    assert _only(tmp_path) == []


def test_disk_full_while_writing_shards_keeps_the_previous_split(tmp_path: Path, monkeypatch):
    import webdataset as wds

    shard_dir = tmp_path / "shards" / "d" / "test"
    write_split(iter([{"__key__": "old", "png": b"1", "cls": 0}]), shard_dir, "d-%06d.tar", 2, {})
    real = wds.TarWriter.write
    calls = {"n": 0}

    def third_fails(self, obj):
        calls["n"] += 1
        if calls["n"] == 3:
            _enospc()
        return real(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", third_fails)
    samples = ({"__key__": f"k{i}", "png": b"x", "cls": 0} for i in range(5))
    with pytest.raises(OSError, match="No space left"):
        write_split(samples, shard_dir, "d-%06d.tar", 2, {})
    assert _only(shard_dir.parent) == ["test"] and [p.name for p in list_shards(shard_dir)] == ["d-000000.tar"]


# temp files are never read --------------------------------------------------------------------------------
def _image_rows(keys: list[str], shard: str) -> pa.Table:
    rows = [
        {"sample_key": k, "dataset": "d", "split": "test", "shard": shard, "label": 0, "model_id": MODEL_ID,
         "embedding": [1.0, 0.0], "status": "ok", "error": None}
        for k in keys
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, IMAGE_EMBEDDINGS)


def test_leftover_temp_files_are_invisible_to_views_and_loaders(tmp_path: Path):
    """What a kill mid-write leaves (`.<name>.<random>.tmp`, half written) is matched by no glob."""
    layout = Layout.at(tmp_path)
    sha = "ab" * 32  # the split's one shard, as an ingest marker records it
    marker = {"samples": 2, "shards": [{"name": "d-test-000000.tar", "sha256": sha, "samples": 2}], "split_id": "x"}
    layout.shard_dir("d", "test").mkdir(parents=True)
    (layout.shard_dir("d", "test") / "_ingest.json").write_text(json.dumps(marker))
    part = layout.image_embedding_part(MODEL_ID, "d", "test", "d-test-000000.tar", sha)
    write_table(_image_rows(["a", "b"], part.stem), part)
    metrics = layout.run_file("r1", "metrics.parquet")
    row = {"run_id": "r1", "dataset": "d", "split": "test", "model_id": "m", "method": "clip", "shots": None}
    write_table(pa.Table.from_pylist([{**row, "seed": None, "metric": "top1", "class_index": None, "value": 1.0}], METRICS), metrics)  # fmt: skip
    globs = layout.view_globs()
    folders = {Path(g).parent for g in globs.values() if "*" not in str(Path(g).parent)}
    folders |= {part.parent, metrics.parent, layout.text_embedding_dir(MODEL_ID), layout.root / "texts"}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (
            "d-test-000001.parquet",
            "predictions.parquet",
            "metrics.parquet",
            "run.parquet",
            "part-x.parquet",
        ):
            (folder / f".{name}.k1ll3d.tmp").write_bytes(b"PAR1 half written")
    db.refresh_views(layout)
    for view in globs:
        db.query(layout, f"SELECT count(*) FROM {view}")  # a temp file read here would raise
    assert db.query(layout, "SELECT count(*) AS n FROM image_embeddings").to_pylist() == [{"n": 2}]
    assert db.query(layout, "SELECT count(*) AS n FROM metrics").to_pylist() == [{"n": 1}]
    assert load_images(layout, MODEL_ID, "d", "test").keys == ["a", "b"]
    tmp_shard = layout.shard_dir("d", "test") / ".d-test-000009.tar.k1ll3d.tmp"
    tmp_shard.write_bytes(b"")
    assert list_shards(tmp_shard.parent) == []


# killed processes -----------------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1", **extra}


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    out = log.open("wb")
    return subprocess.Popen([CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 240) -> None:
    """SIGKILL the process (group) as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before it could be killed:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the process never reached the point where it should be killed")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _ingest_demo(workdir: Path, images_per_class: int, per_shard: int) -> None:
    from coderflow.config import DatasetConfig
    from coderflow.flows.pipeline import ingest_dataset

    ingest_dataset(DatasetConfig(demo_images_per_class=images_per_class, samples_per_shard=per_shard), str(workdir))


@pytest.mark.flow
@pytest.mark.slow
def test_embedding_killed_mid_run_then_resumed(prefect_server, tmp_path: Path):
    workdir = tmp_path / "w"
    _ingest_demo(workdir, images_per_class=16, per_shard=8)  # 160 images in 20 shards
    shards = list_shards(Layout.at(workdir).shard_dir("demo", "test"))
    out_dir = Layout.at(workdir).image_embedding_dir(MODEL_ID, "demo", "test")
    log = tmp_path / "embed.log"
    proc = _start(["embed", "--workdir", str(workdir), "--model.batch-size", "4"], log, _env())
    _kill_when(proc, lambda: any(out_dir.glob("*.parquet")), log)
    assert proc.returncode == -signal.SIGKILL

    done = sorted(out_dir.glob("*.parquet"))
    assert 1 <= len(done) < len(shards), "the kill came too late to test a resume"
    for part in done:  # every visible file is whole
        assert read_table(part).num_rows == 8
    (out_dir / f".{shards[-1].stem}.parquet.k1ll3d.tmp").write_bytes(b"PAR1 half written")  # as a kill mid-write
    mtimes = {p: p.stat().st_mtime_ns for p in done}

    result = run_cli(["embed", "--workdir", str(workdir), "--model.batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes  # finished shards were not redone
    assert len(list(out_dir.glob("*.parquet"))) == len(shards)
    rows = db.query(
        Layout.at(workdir),
        "SELECT count(*) AS n, count(DISTINCT sample_key) AS keys, count(*) FILTER (status = 'ok') AS ok "
        "FROM image_embeddings",
    ).to_pylist()
    assert rows == [{"n": 160, "keys": 160, "ok": 160}]


@pytest.mark.flow
@pytest.mark.slow
def test_text_generation_killed_mid_run_keeps_paid_replies(prefect_server, tmp_path: Path):
    workdir = tmp_path / "w"
    _ingest_demo(workdir, images_per_class=1, per_shard=10)  # 10 classes -> 10 attribute requests
    cache = Layout.at(workdir).llm_cache_dir
    with FakeOpenAI() as server:
        server.responder = lambda req: dataclasses.replace(structured(req), delay=1.0)
        args = ["texts", "--workdir", str(workdir), "--generator", "llm", "--texts.types", "name,att"]
        args += ["--texts.llm.model", "fake-model", "--texts.llm.base-url", server.base_url]
        env = _env(OPENAI_API_KEY=API_KEY, OPENAI_LOG="debug")
        log = tmp_path / "texts.log"
        proc = _start(args, log, env)
        _kill_when(proc, lambda: len(list(cache.glob("*.json"))) >= 2, log)
        paid = {p: p.stat().st_mtime_ns for p in cache.glob("*.json")}
        sent_before = len(server.requests)
        assert 2 <= len(paid) < 10 and sent_before >= len(paid)

        server.responder = structured
        result = run_cli([*args], env={"OPENAI_API_KEY": API_KEY})
        assert result.exit_code == 0, result.output
        assert len(server.requests) - sent_before == 10 - len(paid)  # cached replies were not asked again
        assert {p: p.stat().st_mtime_ns for p in paid} == paid
        assert len(list(cache.glob("*.json"))) == 10
    n = db.query(Layout.at(workdir), "SELECT count(*) AS n FROM texts WHERE text_type = 'att'").to_pylist()[0]["n"]
    assert n > 0
    # the key is in no log line of the killed run (OPENAI_LOG=debug) and in no file of the work directory
    assert API_KEY not in log.read_text(errors="replace") and API_KEY not in result.output
    for path in workdir.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MiB file system (tmpfs), where the machine allows mounting one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs privileges this machine does not give")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: files this process still holds open


def test_disk_full_is_one_line_naming_the_file_and_the_space(tiny_disk: Path):
    import numpy as np

    table = pa.table({"x": np.random.default_rng(0).random(400_000)})
    with pytest.raises(OSError) as err:
        write_table(table, tiny_disk / "a" / "x.parquet", table.schema)
    message = str(err.value)
    assert "x.parquet" in message and "No space left on device (" in message and "MiB free" in message
    assert not list((tiny_disk / "a").iterdir())  # no partial file left behind
    out = run_cli(["ingest", "--workdir", str(tiny_disk / "w"), "--dataset.demo-images-per-class", "400"])
    lines = out.output.strip().splitlines()
    assert out.exit_code == 2 and lines[-1].startswith("error: ") and "No space left" in lines[-1], out.output


def test_disk_full_while_writing_shards_names_the_shard_and_the_space(tiny_disk: Path):
    """The shard writer's full disk is the same one line as every other writer's: the file, written and free MiB."""
    shard_dir = tiny_disk / "shards" / "d" / "test"
    noise = os.urandom(300_000)  # incompressible: four of them overflow the 1 MiB disk
    samples = ({"__key__": f"k{i}", "png": noise + bytes([i]), "cls": 0} for i in range(6))
    with pytest.raises(OSError) as err:
        write_split(samples, shard_dir, "d-%06d.tar", 2, {})
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert re.search(
        rf"could not write {re.escape(str(shard_dir))}/d-00000\d\.tar: No space left on device \(", message
    )
    assert "MiB written before it ran out" in message and "MiB free" in message, message
    assert _only(shard_dir.parent) == []  # no staging folder left behind


def test_disk_full_while_refreshing_the_views_is_one_line(tiny_disk: Path):
    layout = Layout.at(tiny_disk / "w")
    layout.root.mkdir()
    with pytest.raises(OSError), open(tiny_disk / "filler", "wb", buffering=0) as f:  # fill it to its last block
        while True:
            f.write(b"\0" * 4096)
    with pytest.raises(OSError) as err:
        db.refresh_views(layout)
    message = str(err.value)
    assert err.value.errno == errno.ENOSPC and f"could not write {layout.database}: No space left" in message
    assert "MiB free" in message and _only(layout.root) == []


@pytest.mark.flow
def test_disk_full_in_a_run_is_the_first_error_even_when_the_view_refresh_fails(prefect_server, tiny_disk: Path):
    out = run_cli(["run", "--workdir", tiny_disk / "w", "--dataset.demo-images-per-class", "400", "--methods", "clip"])
    last = out.output.strip().splitlines()[-1]
    assert out.exit_code == 2, out.output
    assert last.startswith("error: could not write ") and ".tar: No space left on device (" in last, last
    assert "MiB free" in last and "IOException" not in last, last


def test_a_failing_clean_up_never_replaces_the_error_that_stopped_the_flow(tmp_path: Path, monkeypatch):
    from coderflow.flows import bookkeeping

    def refresh_fails(workdir: str) -> str:
        raise OSError(errno.ENOSPC, "could not write coderflow.duckdb: No space left on device")

    monkeypatch.setattr(bookkeeping.refresh_database, "fn", refresh_fails)
    with pytest.raises(OSError, match=r"could not write shard\.tar"), bookkeeping.refreshed_on_error(str(tmp_path)):
        raise OSError(errno.ENOSPC, "could not write shard.tar: No space left on device")


@pytest.mark.flow
@pytest.mark.slow
def test_sigterm_ends_text_generation_promptly(prefect_server, tmp_path: Path):
    """A slow endpoint (one byte every 0.2 s) with requests in flight: SIGTERM ends `coderflow texts` within about
    one request's total timeout (2 s here), with exit code 130, instead of waiting for every queued request."""
    workdir = tmp_path / "w"
    _ingest_demo(workdir, images_per_class=1, per_shard=10)  # 10 classes -> 10 attribute requests
    with FakeOpenAI() as server:
        server.responder = lambda req: dataclasses.replace(structured(req), trickle=0.2)
        args = ["texts", "--workdir", str(workdir), "--generator", "llm", "--texts.types", "name,att"]
        args += ["--texts.llm.model", "fake-model", "--texts.llm.base-url", server.base_url]
        args += ["--texts.llm.timeout", "2", "--texts.llm.max-concurrency", "2", "--texts.llm.max-retries", "0"]
        log = tmp_path / "texts.log"
        proc = _start(args, log, _env(OPENAI_API_KEY=API_KEY))
        deadline = time.monotonic() + 240
        while not server.requests and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert server.requests, log.read_text()[-2000:]
        start = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
        assert time.monotonic() - start < 15, log.read_text()[-2000:]
        said = log.read_text()
        assert proc.returncode == 130 and ("interrupted" in said or "termination signal" in said), said[-2000:]
        assert len(server.requests) < 10  # the queued requests were never sent


@pytest.mark.flow
@pytest.mark.slow
def test_sigterm_during_retries_sends_nothing_more(prefect_server, tmp_path: Path):
    """A failing endpoint (HTTP 503, retried after 1, 2, 4, ... s): SIGTERM during a back-off ends `coderflow texts`
    within about one request timeout (2 s here); no request and no retry reaches the server after the signal."""
    workdir = tmp_path / "w"
    _ingest_demo(workdir, images_per_class=1, per_shard=10)  # 10 classes -> 10 attribute requests
    received: list[float] = []

    def failing(req: dict) -> object:
        received.append(time.monotonic())
        return error(503, "overloaded")

    with FakeOpenAI() as server:
        server.responder = failing
        args = ["texts", "--workdir", str(workdir), "--generator", "llm", "--texts.types", "name,att"]
        args += ["--texts.llm.model", "fake-model", "--texts.llm.base-url", server.base_url]
        args += ["--texts.llm.timeout", "2", "--texts.llm.max-concurrency", "2", "--texts.llm.max-retries", "6"]
        log = tmp_path / "texts.log"
        proc = _start(args, log, _env(OPENAI_API_KEY=API_KEY))
        deadline = time.monotonic() + 240
        while len(received) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)  # a first retry was sent: the threads are now in their 2 s back-off
        assert len(received) >= 3, log.read_text()[-2000:]
        time.sleep(0.3)
        start = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(120)
        took = time.monotonic() - start
        said = log.read_text()
        assert [t - start for t in received if t > start] == [], said[-3000:]  # no new request, no retry after it
        assert proc.returncode == 130, said[-3000:]
        assert took < 15, f"{took:.1f} s\n{said[-3000:]}"  # the retries alone would take 1+2+4+8+16+30 s
