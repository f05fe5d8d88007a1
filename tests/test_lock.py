"""The work-directory lock, with real processes and threads: waits, says so once, re-enters, survives a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coderflow.storage.lock import ENV_TIMEOUT, LOCK_NAME, lock_file, lock_timeout, workdir_lock

HOLD = """
import sys, time
from coderflow.storage.lock import workdir_lock
with workdir_lock(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture(autouse=True)
def _no_timeout(monkeypatch):
    monkeypatch.delenv(ENV_TIMEOUT, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "wd"


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the lock for `seconds`; returns once it holds it."""
    env = {k: v for k, v in os.environ.items() if k != ENV_TIMEOUT}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held", "the holder process did not get the lock"
    return proc


def _waiting_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is in use by" in line]


def _sidecar(root: Path) -> Path:
    return root / f"{LOCK_NAME}.json"


def test_a_second_process_waits_and_says_so_once(root: Path, capfd):
    proc = _holder(root, 2.0)
    try:
        assert json.loads(_sidecar(root).read_text())["pid"] == proc.pid
        start = time.monotonic()
        with workdir_lock(root, "test waiter"):
            waited = time.monotonic() - start
            assert json.loads(_sidecar(root).read_text())["what"] == "test waiter"  # the holder's sidecar is gone
    finally:
        proc.wait(timeout=10)
    assert waited > 1.0
    lines = _waiting_lines(capfd.readouterr().err)
    assert len(lines) == 1
    pattern = (
        rf"work directory {re.escape(str(root))} is in use by pid {proc.pid} \(test holder, since \d\d:\d\d:\d\d\)"
    )
    assert re.fullmatch(pattern + ": waiting for it to finish", lines[0]), lines[0]
    assert (root / LOCK_NAME).exists() and not _sidecar(root).exists()  # the lock file stays, the sidecar goes


def test_the_lock_is_reentrant_in_one_thread(root: Path, monkeypatch, capfd):
    monkeypatch.setenv(ENV_TIMEOUT, "0.2")
    start = time.monotonic()
    with workdir_lock(root, "pipeline"):
        with workdir_lock(str(root), "sub-flow"), workdir_lock(root / "." / "", "task"):
            assert json.loads(_sidecar(root).read_text())["what"] == "pipeline"  # the outermost holder names it
        assert _sidecar(root).exists()  # an inner exit does not release the lock
        errors = []

        def other():
            try:
                with workdir_lock(root, "other thread"):
                    pass
            except TimeoutError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=5)
        assert errors and "is still in use by" in errors[0]  # still held by this thread after the inner exits
    assert time.monotonic() - start < 2.0
    assert not _sidecar(root).exists()
    with workdir_lock(root, "again"):  # free after the outermost exit
        pass
    assert len(_waiting_lines(capfd.readouterr().err)) == 1  # only the other thread waited


def test_a_second_thread_waits(root: Path, capfd):
    held, times = threading.Event(), {}

    def other():
        held.wait()
        times["start"] = time.monotonic()
        with workdir_lock(root, "thread"):
            times["got"] = time.monotonic()

    thread = threading.Thread(target=other)
    thread.start()
    with workdir_lock(root, "main thread"):
        held.set()
        time.sleep(1.0)
        released = time.monotonic()
        assert "got" not in times
    thread.join(timeout=5)
    assert times["got"] >= released and times["got"] - times["start"] > 0.8
    lines = _waiting_lines(capfd.readouterr().err)
    assert len(lines) == 1 and f"is in use by pid {os.getpid()} (main thread, since " in lines[0]


def test_a_killed_holder_does_not_block(root: Path, capfd):
    proc = _holder(root, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert json.loads(_sidecar(root).read_text())["pid"] == proc.pid  # a stale sidecar: it must not matter
    start = time.monotonic()
    with workdir_lock(root, "next"):
        assert time.monotonic() - start < 1.0
        assert json.loads(_sidecar(root).read_text())["pid"] == os.getpid()
    assert not _waiting_lines(capfd.readouterr().err)


def test_a_timeout_gives_a_one_line_error(root: Path, monkeypatch):
    proc = _holder(root, 3.0)
    monkeypatch.setenv(ENV_TIMEOUT, "0.5")
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError) as err, workdir_lock(root, "late"):
            pass
        assert 0.4 < time.monotonic() - start < 2.0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"work directory {root} is still in use by pid {proc.pid} (test holder, since ")
    assert message.endswith(f"after 0.5 s: try again when it finishes, or raise {ENV_TIMEOUT}")


def test_a_garbled_sidecar_only_omits_the_details(root: Path, capfd):
    held = threading.Event()
    done = threading.Event()

    def holder():
        with workdir_lock(root, "holder"):
            _sidecar(root).write_text("{not json")
            held.set()
            done.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    threading.Timer(0.5, done.set).start()
    with workdir_lock(root, "waiter"):
        pass
    thread.join(timeout=5)
    assert _waiting_lines(capfd.readouterr().err) == [
        f"work directory {root} is in use by another process: waiting for it to finish"
    ]


def test_lock_file_places_and_timeout_setting(tmp_path: Path, monkeypatch):
    assert lock_file(tmp_path / "wd") == tmp_path / "wd" / LOCK_NAME
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url = lock_file("memory://bucket/wd")
    assert url.parent == tmp_path / "cache" / "coderflow" / "locks" and url.suffix == ".lock"
    assert lock_file("memory://bucket/wd") == url != lock_file("memory://bucket/other")
    with workdir_lock("memory://bucket/wd", "url"):
        assert url.exists()
    assert lock_timeout() is None
    monkeypatch.setenv(ENV_TIMEOUT, "2.5")
    assert lock_timeout() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(ENV_TIMEOUT, bad)
        with pytest.raises(ValueError, match=f"{ENV_TIMEOUT}='{bad}' is not a number of seconds"):
            lock_timeout()
