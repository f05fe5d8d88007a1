"""The work-directory lock across hosts: processes with separate local caches on one s3:// work directory (moto).

Each process gets its own HOME and XDG_CACHE_HOME, so the local file lock cannot see the other: only the lease
object in the bucket (`<workdir>/.coderflow.lock`) keeps them apart, as between two machines.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from moto_s3 import moto_s3

from coderflow.storage.lock import ENV_TIMEOUT, ENV_TTL, LOCK_NAME, lease_ttl, workdir_lock

CLI = str(Path(sys.executable).with_name("coderflow"))

HOLD = """
import json, sys, time
from coderflow.storage.lock import workdir_lock
from pathlib import Path
url, what, hold, record = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
with workdir_lock(url, what):
    entered = time.time()
    print("held", flush=True)
    if hold.replace(".", "").isdigit():  # seconds
        time.sleep(float(hold))
    else:  # until the test creates this file (at most a minute)
        for _ in range(600):
            if Path(hold).exists():
                break
            time.sleep(0.1)
    left = time.time()
with open(record, "a") as f:
    f.write(json.dumps({"what": what, "enter": entered, "exit": left}) + "\\n")
"""


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A local S3 HTTP server (tests/moto_s3.py)."""
    with moto_s3(tmp_path_factory.mktemp("xdg-cache"), "s3-secret-Lk4w") as fs:
        yield fs


@pytest.fixture
def s3_workdir(s3_server, monkeypatch) -> tuple[str, object]:
    """A fresh bucket's work directory URL, with the lock settings unset."""
    for name in (ENV_TIMEOUT, ENV_TTL):
        monkeypatch.delenv(name, raising=False)
    bucket = f"coderflow-lock-{uuid.uuid4().hex[:8]}"
    s3_server.mkdir(bucket)
    return f"s3://{bucket}/wd", s3_server


def _host_env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a process on its own 'host': its own HOME and cache folder."""
    home = tmp_path / f"home-{name}"
    (home / ".cache").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in (ENV_TIMEOUT, ENV_TTL)}
    return env | {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), **extra}


def _hold(url: str, what: str, hold: float | Path, record: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process on its own 'host' that holds the lock for `hold` seconds, or until the file `hold` exists."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, url, what, str(hold), str(record)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _waiting_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is in use by" in line]


def _lease_key(url: str) -> str:
    return f"{url.removeprefix('s3://')}/{LOCK_NAME}"


def test_two_hosts_never_hold_one_s3_workdir_at_once(s3_workdir, tmp_path: Path):
    url, fs = s3_workdir
    record = tmp_path / "holds.jsonl"
    release = tmp_path / "release-a"
    first = _hold(url, "host A", release, record, _host_env(tmp_path, "a"))
    try:
        assert first.stdout.readline().strip() == "held", first.stderr.read()
        second = _hold(url, "host B", 0.2, record, _host_env(tmp_path, "b"))
        waiting = second.stderr.readline()  # B says it waits (or ends without holding: the test fails below)
        release.touch()  # A lets go only now: however slowly B started, it had to wait
        _, err_b = second.communicate(timeout=60)
        err_b = waiting + err_b
        _, err_a = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0 and second.returncode == 0, err_a + err_b
    holds = {row["what"]: row for row in map(json.loads, record.read_text().splitlines())}
    assert holds["host B"]["enter"] >= holds["host A"]["exit"], holds  # the intervals never overlap
    lines = _waiting_lines(err_b)
    assert len(lines) == 1, err_b
    pattern = rf"work directory {re.escape(url)} is in use by pid {first.pid} on \S+ \(host A, since \d\d:\d\d:\d\d\)"
    assert re.fullmatch(pattern + ": waiting for it to finish", lines[0]), lines[0]
    assert not _waiting_lines(err_a)
    assert not fs.exists(_lease_key(url))  # released by the last holder


def test_a_timeout_across_hosts_is_one_line(s3_workdir, tmp_path: Path, monkeypatch):
    url, _ = s3_workdir
    first = _hold(url, "host A", 4.0, tmp_path / "holds.jsonl", _host_env(tmp_path, "a"))
    try:
        assert first.stdout.readline().strip() == "held", first.stderr.read()
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-b"))  # this process: another host
        monkeypatch.setenv(ENV_TIMEOUT, "1")
        start = time.monotonic()
        with pytest.raises(TimeoutError) as err, workdir_lock(url, "host B"):
            pytest.fail("got the lock of a work directory another host holds")
        assert 0.9 < time.monotonic() - start < 5.0
    finally:
        first.kill()
        first.wait(timeout=30)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"work directory {url} is still in use by pid {first.pid} on ")
    assert "(host A, since " in message
    assert message.endswith(f"after 1 s: try again when it finishes, or raise {ENV_TIMEOUT}")


def test_a_stale_lease_is_taken_over(s3_workdir, tmp_path: Path, monkeypatch, capfd):
    url, fs = s3_workdir
    old = time.time() - 3600
    dead = {"host": "crashed-host", "pid": 4242, "what": "flow pipeline", "since": old, "heartbeat": old}
    fs.pipe_file(_lease_key(url), json.dumps(dead).encode())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_TTL, "1")
    monkeypatch.setenv(ENV_TIMEOUT, "20")
    start = time.monotonic()
    with workdir_lock(url, "next"):
        waited = time.monotonic() - start
        lease = json.loads(fs.cat_file(_lease_key(url)))
        assert (lease["pid"], lease["what"]) == (os.getpid(), "next")
    assert waited < 10
    assert not fs.exists(_lease_key(url))
    err = capfd.readouterr().err
    assert "took over the lease of pid 4242 on crashed-host (flow pipeline, since " in err, err
    assert len(_waiting_lines(err)) <= 1


def test_a_killed_holder_of_this_machine_does_not_block_for_the_ttl(s3_workdir, tmp_path: Path, monkeypatch, capfd):
    url, fs = s3_workdir
    first = _hold(url, "killed", 60.0, tmp_path / "holds.jsonl", _host_env(tmp_path, "a"))
    assert first.stdout.readline().strip() == "held"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert json.loads(fs.cat_file(_lease_key(url)))["pid"] == first.pid  # left behind
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-b"))
    monkeypatch.setenv(ENV_TIMEOUT, "10")  # far below the TTL (120 s)
    start = time.monotonic()
    with workdir_lock(url, "next"):
        assert time.monotonic() - start < 5.0
    err = capfd.readouterr().err
    assert f"took over the lease of pid {first.pid} on " in err and "a process of this machine that is gone" in err
    assert not _waiting_lines(err)


def test_a_killed_holder_that_looks_alive_is_taken_over_after_the_ttl(s3_workdir, tmp_path: Path):
    """Host B cannot tell that host A's holder died: it waits until the lease's heartbeat is older than the TTL.

    The killed holder is not reaped, so it stays a zombie whose pid still answers kill(pid, 0): to the waiter it looks
    alive, as a holder on another machine does (whose pid it cannot check). Only the TTL frees the lease then.
    """
    url, fs = s3_workdir
    ttl = 3.0
    record = tmp_path / "holds.jsonl"
    first = _hold(url, "host A", 600.0, record, _host_env(tmp_path, "a", **{ENV_TTL: str(ttl)}))
    try:
        assert first.stdout.readline().strip() == "held", first.stderr.read()
        os.kill(first.pid, signal.SIGKILL)
        killed = time.time()
        time.sleep(0.2)
        os.kill(first.pid, 0)  # no ProcessLookupError: the unreaped holder still has its pid
        assert json.loads(fs.cat_file(_lease_key(url)))["pid"] == first.pid  # its lease is left behind
        env_b = _host_env(tmp_path, "b", **{ENV_TTL: str(ttl), ENV_TIMEOUT: "60"})
        second = _hold(url, "host B", 0.1, record, env_b)
        _, err = second.communicate(timeout=90)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 0, err
    entered = json.loads(record.read_text().splitlines()[-1])["enter"]
    assert entered - killed >= ttl - 1.0, (entered - killed, err)  # S3 times are whole seconds: up to 1 s early
    assert entered - killed < ttl + 30, (entered - killed, err)
    assert len(_waiting_lines(err)) == 1 and f"in use by pid {first.pid} on " in err, err
    assert re.search(
        rf"took over the lease of pid {first.pid} on \S+ \(host A, since [^)]*\), whose last heartbeat was \d+ s ago",
        err,
    ), err
    assert not fs.exists(_lease_key(url))


RACER = """
import json, sys, time
from pathlib import Path
from coderflow.storage.lock import workdir_lock
url, name, go, record = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
while not go.exists():
    time.sleep(0.01)
with workdir_lock(url, name):
    entered = time.time()
    time.sleep(0.3)
    left = time.time()
with open(record, "a") as f:
    f.write(json.dumps({"what": name, "enter": entered, "exit": left}) + "\\n")
"""


def test_hosts_racing_for_a_free_lease_hold_it_one_at_a_time(s3_workdir, tmp_path: Path):
    """Four hosts ask for a free lease at the same moment: the create is conditional, so exactly one gets it at a time."""
    url, fs = s3_workdir
    go, record = tmp_path / "go", tmp_path / "holds.jsonl"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, f"host {i}", str(go), str(record)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_host_env(tmp_path, str(i)),
        )
        for i in range(4)
    ]
    try:
        time.sleep(3.0)  # every racer imported and polls for the start
        go.touch()
        errs = [p.communicate(timeout=120)[1] for p in racers]
    finally:
        for p in racers:
            p.kill()
    assert all(p.returncode == 0 for p in racers), errs
    holds = sorted(map(json.loads, record.read_text().splitlines()), key=lambda h: h["enter"])
    assert len(holds) == 4
    for before, after in itertools.pairwise(holds):
        assert after["enter"] >= before["exit"], holds  # never two holders at once
    assert sum(len(_waiting_lines(e)) for e in errs) == 3, errs  # all but the first said once that they wait
    assert not fs.exists(_lease_key(url))


def test_a_holder_whose_lease_was_taken_notices_and_leaves_it(s3_workdir, tmp_path: Path, monkeypatch, capfd):
    url, fs = s3_workdir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_TTL, "1")  # a heartbeat every 0.25 s
    other = {"host": "other-host", "pid": 7, "what": "flow ingest", "since": time.time(), "heartbeat": time.time()}
    with workdir_lock(url, "slow holder"):
        fs.pipe_file(_lease_key(url), json.dumps(other).encode())  # as if another host had taken it over
        time.sleep(1.0)
    assert json.loads(fs.cat_file(_lease_key(url)))["host"] == "other-host"  # not deleted: it is not ours
    assert "this command lost its lock" in capfd.readouterr().err


def test_reentrant_holds_share_one_lease(s3_workdir, tmp_path: Path, monkeypatch):
    url, fs = s3_workdir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_TIMEOUT, "0")  # an inner hold that waited for its own lease would fail at once
    with workdir_lock(url, "pipeline"):
        with workdir_lock(url, "sub-flow"), workdir_lock(url, "task"):
            assert json.loads(fs.cat_file(_lease_key(url)))["what"] == "pipeline"  # the outermost hold's lease
        assert fs.exists(_lease_key(url))  # an inner exit keeps it
    assert not fs.exists(_lease_key(url))


def test_lease_ttl_setting(monkeypatch):
    monkeypatch.delenv(ENV_TTL, raising=False)
    assert lease_ttl() == 120.0
    monkeypatch.setenv(ENV_TTL, "30")
    assert lease_ttl() == 30.0
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv(ENV_TTL, bad)
        with pytest.raises(ValueError, match=f"{ENV_TTL}='{bad}' is not a number of seconds > 0"):
            lease_ttl()


HOLD_UNTIL_TOLD = """
import json, sys, time
from coderflow.storage.lock import workdir_lock
with workdir_lock(sys.argv[1], "host A"):
    print("held", flush=True)
    sys.stdin.readline()
    left = time.time()
print(json.dumps({"exit": left}), flush=True)
"""


@pytest.mark.flow
@pytest.mark.slow
def test_the_cli_on_another_host_waits_for_the_lease(prefect_server, s3_workdir, tmp_path: Path):
    """`coderflow ingest` with its own cache waits while host A holds the s3:// work directory, then ingests."""
    from prefect.settings import PREFECT_API_URL

    url, fs = s3_workdir
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_UNTIL_TOLD, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_host_env(tmp_path, "a"),
    )
    log = tmp_path / "ingest-b.log"
    env = _host_env(tmp_path, "b", PREFECT_API_URL=str(PREFECT_API_URL.value()), PYTHONUNBUFFERED="1")
    args = [CLI, "ingest", "--workdir", url, "--dataset.demo-images-per-class", "2"]
    try:
        assert holder.stdout.readline().strip() == "held"
        with log.open("wb") as out:
            cli = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        deadline = time.monotonic() + 240
        while not _waiting_lines(log.read_text(errors="replace")):
            assert cli.poll() is None, f"the CLI did not wait (rc {cli.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the CLI never said it waits"
            time.sleep(0.2)
        assert not fs.exists(f"{url}/shards"), "the CLI wrote while host A held the work directory"
        released = json.loads(holder.communicate("go\n", timeout=60)[0].splitlines()[-1])["exit"]
        assert cli.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        holder.kill()
        if "cli" in locals():
            cli.kill()
    output = log.read_text(errors="replace")
    lines = _waiting_lines(output)
    assert len(lines) == 1 and f"is in use by pid {holder.pid} on " in lines[0] and "(host A, since " in lines[0]
    marker = fs.info(f"{url}/shards/demo/test/_ingest.json")
    assert marker["LastModified"].timestamp() >= int(released)  # written after host A let go (S3: whole seconds)
    assert not fs.exists(_lease_key(url))
