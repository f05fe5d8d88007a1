"""Many hosts: `coderflow run` and `coderflow fewshot` on a Dask or Ray cluster whose worker processes share nothing
with the driver but an s3:// work directory (a local moto S3 server), and give a threads run's stored results.

Every process of the test stands for a host of its own: its own HOME, XDG_CACHE_HOME (coderflow's local cache),
PREFECT_HOME, TMPDIR and working directory, given through the environment. What the workers leave in those folders
is checked after the runs (`_left_on_host`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fsspec.core import url_to_fs
from moto_s3 import moto_s3

pytestmark = [pytest.mark.slow, pytest.mark.flow]

BIN = Path(sys.executable).parent
# the tiniest settings the flow tests use: 10 classes x 2 images, class-name texts, one zero-shot method
RUN = [
    "--dataset.demo-images-per-class", "2", "--dataset.samples-per-shard", "10", "--model.name", "ViT-S-32-alt",
    "--model.batch-size", "16", "--texts.types", "name", "--methods", "clip",
]  # fmt: skip
FEWSHOT = [
    *RUN[:8], "--texts.types", "name", "--shots", "1", "--seeds", "1", "--fewshot.augment-views", "0",
    "--fewshot.methods", "prototype", "--fewshot.methods", "tip_adapter",
]  # fmt: skip
ENV_OWN = ("HOME", "XDG_CACHE_HOME", "PREFECT_HOME", "TMPDIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """The folders and environment of one 'host': nothing shared with another but the S3 server's address."""

    def __init__(self, root: Path, name: str, **extra: str) -> None:
        self.root = root / name
        self.home, self.work = self.root / "home", self.root / "cwd"
        self.folders = {
            "HOME": self.home, "XDG_CACHE_HOME": self.home / ".cache", "PREFECT_HOME": self.root / "prefect",
            "TMPDIR": self.root / "tmp",
        }  # fmt: skip
        for folder in [*self.folders.values(), self.work]:
            folder.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CODERFLOW_", "DASK_", "RAY_"))}
        self.env = base | {k: str(v) for k, v in self.folders.items()} | {"PYTHONUNBUFFERED": "1", **extra}

    def start(self, args: list[str], log: str) -> subprocess.Popen:
        """A long-running process of this host (its own session: the test stops it and its children by group)."""
        out = (self.root / log).open("wb")
        return subprocess.Popen(
            args, cwd=self.work, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the processes and their children (each process leads its own process group)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)


# Files of the runners themselves in a worker's folders: Dask's scratch space (its --local-directory) and Ray's
# session folders. Anything else found there was written by the tasks, i.e. by coderflow.
RUNNER_OWN = ("dask-scratch-space", "ray")


def _left_on_host(host: Host) -> list[str]:
    """Every file in the worker host's HOME, cache, PREFECT_HOME, temp and working folders that its runner did not
    write itself. The runs must leave none: a result, a temp file not cleaned up, a cache entry the next task on
    that host would rely on (the model, text and image data all live in the bucket)."""
    found = []
    for folder in [*host.folders.values(), host.work]:
        for path in folder.rglob("*"):
            rel = path.relative_to(host.root)
            if path.is_file() and not any(part in RUNNER_OWN for part in rel.parts):
                found.append(str(rel))
    return sorted(set(found))


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[tuple[str, object]]:
    """A bucket on a local S3 HTTP server (tests/moto_s3.py); its address and keys are in the environment."""
    with moto_s3(tmp_path_factory.mktemp("xdg-cache"), "s3-secret-Mh7r") as fs:
        bucket = f"coderflow-hosts-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        yield bucket, fs


def _coderflow(host: Host, command: str, args: list[str], timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(BIN / "coderflow"), command, *args], cwd=host.work, env=host.env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"coderflow {command} {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _stored(fs, workdir: str) -> dict[str, list[dict]]:
    """The predictions and metrics Parquet files of every run in a work directory, by file name, sorted, without the
    run's id (each run has its own)."""
    out: dict[str, list[dict]] = {}
    fs, root = url_to_fs(workdir) if fs is None else (fs, workdir.removeprefix("s3://"))
    for name in ("predictions.parquet", "metrics.parquet"):
        rows = []
        for path in sorted(fs.glob(f"{root}/runs/*/{name}")):
            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
            rows += [{k: v for k, v in r.items() if k != "run_id"} for r in table.to_pylist()]
        out[name] = sorted(rows, key=lambda r: repr({k: v for k, v in r.items() if not isinstance(v, float)}))
    return out


def _same_results(got: dict[str, list[dict]], expected: dict[str, list[dict]]) -> None:
    for name, rows in expected.items():
        assert rows, f"the threads run stored no {name}"
        assert len(got[name]) == len(rows), name
        for a, b in zip(got[name], rows, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(b[key], float):
                    assert a[key] == pytest.approx(b[key], abs=1e-6), (name, key, a, b)
                else:
                    assert a[key] == b[key], (name, key, a, b)


@pytest.fixture(scope="module")
def threads_results(prefect_server, tmp_path_factory) -> dict[str, dict[str, list[dict]]]:
    """`coderflow run` and `coderflow fewshot` with the thread runner, on a local work directory."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("threads")
    driver = Host(root, "driver", PREFECT_API_URL=str(PREFECT_API_URL.value()))
    out = {}
    for command, args in (("run", RUN), ("fewshot", FEWSHOT)):
        workdir = str(root / f"threads-{command}")  # the reference: one process, on the local disk
        _coderflow(driver, command, ["--workdir", workdir, *args])
        out[command] = _stored(None, workdir)
    return out


def _run_on_cluster(s3, threads_results, driver: Host, runner: str, address: str) -> None:
    bucket, fs = s3
    for command, args in (("run", RUN), ("fewshot", FEWSHOT)):
        workdir = f"s3://{bucket}/{runner}-{command}"
        _coderflow(driver, command, ["--workdir", workdir, *args, "--runner", runner, "--runner-address", address])
        _same_results(_stored(fs, workdir), threads_results[command])


def test_dask_workers_on_other_hosts_give_the_threads_results(s3, threads_results, prefect_server, tmp_path: Path):
    """`dask scheduler` and two `dask worker` processes, each a host of its own; the driver is a third."""
    pytest.importorskip("prefect_dask")
    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    api = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = Host(tmp_path, "scheduler")
    workers = [Host(tmp_path, f"worker-{i}", **api) for i in range(2)]
    procs = [scheduler.start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], "scheduler.log")]  # fmt: skip
    try:
        for i, host in enumerate(workers):
            args = [
                str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                "--name", f"w{i}", "--local-directory", str(host.root / "dask-scratch-space"),
            ]  # fmt: skip
            procs.append(host.start(args, "worker.log"))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            _run_on_cluster(s3, threads_results, Host(tmp_path, "driver", **api), "dask", address)
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert sum(executed.values()) >= 4, executed  # the tasks ran on the workers (2 shards, embed + CODER each)
    finally:
        _stop(procs)
    for host in workers:
        assert _left_on_host(host) == [], (host.root.name, (host.root / "worker.log").read_text()[-2000:])


def test_ray_workers_on_another_host_give_the_threads_results(s3, threads_results, prefect_server, tmp_path: Path):
    """`ray start --head` with two CPUs (two worker processes) as a host of its own; the driver is another.

    One Ray node, not a head and two worker nodes: on 2 cores three raylets start too slowly to be reliable (a third
    node timed out joining here), and the worker processes of one node share nothing with the driver either.
    """
    pytest.importorskip("prefect_ray")
    from prefect.settings import PREFECT_API_URL

    api = {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    ray_env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # a loopback-only test cluster
    port = _free_port()
    address = f"127.0.0.1:{port}"
    node = Host(tmp_path, "node", **ray_env, **api)
    # Ray's session folder (its sockets and logs): short, as socket paths must be
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    args = [
        str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
        "--temp-dir", str(temp), "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
    ]  # fmt: skip
    head = node.start(args, "node.log")
    try:
        driver = Host(tmp_path, "driver", **ray_env, **api)
        _wait_for_ray_nodes(driver, address, 1)
        _run_on_cluster(s3, threads_results, driver, "ray", address)
        logs = "".join(f.read_text(errors="replace") for f in temp.glob("session_*/logs/worker-*"))
        ran = "Task run 'embed-shard" in logs or ":task_name:embed-shard" in logs  # Ray's own record, or Prefect's
        assert ran, "no task ran in the node's worker processes"
    finally:
        head.terminate()  # `ray start --block` drains the node and stops its processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        _stop([head])
        shutil.rmtree(temp, ignore_errors=True)
    assert _left_on_host(node) == [], (node.root / "node.log").read_text()[-2000:]


NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.5)
print(sum(n["Alive"] for n in ray.nodes()))
"""


def _wait_for_ray_nodes(host: Host, address: str, n: int, timeout: float = 120) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NODES, address, str(n), str(timeout)], cwd=host.work, env=host.env,
        capture_output=True, text=True, timeout=timeout + 60,
    )  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1:] == [str(n)], (
        f"the Ray cluster has not {n} nodes:\n{proc.stderr[-2000:]}"
    )
