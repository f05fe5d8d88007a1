"""How flows run: the task runner is configuration (threads, Dask or Ray), subflows share their parent's heartbeat,
and a flow holds its work directory's lock."""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from prefect import Flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from coderflow.config import PipelineConfig
from coderflow.storage.layout import Layout
from coderflow.storage.lock import workdir_lock

F = TypeVar("F", bound=Flow)
C = TypeVar("C", bound=Callable[..., Any])

_lock = threading.Lock()
# Shards in flight on the thread runner: two keep decoding and inference overlapped on a laptop while memory stays
# bounded (unbounded, 50 shards of 400 tiny images peaked at 1.98 GB: every mapped shard started at once).
THREADS = 2
_local_dask: dict[int, Any] = {}  # n_workers -> LocalCluster, one per process, closed at exit


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"runner {extra!r} needs its extra: pip install 'coderflow[{extra}]' ({exc})")


def default_workers() -> int:
    """Local worker processes when `runner_workers` is not set: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_dask_address(n_workers: int) -> str:
    """The scheduler address of this process's local Dask cluster (started once: n single-threaded processes)."""
    with _lock:
        cluster = _local_dask.get(n_workers)
        if cluster is None:
            try:
                from distributed import LocalCluster
            except ImportError as exc:
                raise _missing("dask", exc) from exc
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
            )  # fmt: skip
            _local_dask[n_workers] = cluster
            atexit.register(cluster.close)
        return cluster.scheduler_address


def close_local_clusters() -> None:
    """Stop the local Dask clusters this process started (they also stop at exit)."""
    with _lock:
        while _local_dask:
            _, cluster = _local_dask.popitem()
            atexit.unregister(cluster.close)
            cluster.close()


def ensure_ray(address: str | None, n_workers: int) -> None:
    """Connect this process to Ray once (a local instance when no address), so that every sub-flow re-uses it."""
    try:
        import ray
    except ImportError as exc:
        raise _missing("ray", exc) from exc
    with _lock:
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=n_workers, include_dashboard=False, log_to_driver=False)
            atexit.register(ray.shutdown)


def task_runner(cfg: PipelineConfig) -> TaskRunner:
    """The configured task runner: a thread pool, a Dask cluster or a Ray cluster (local or at an address)."""
    if cfg.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.runner_workers or THREADS)
    workers = cfg.runner_workers or default_workers()
    if cfg.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise _missing("dask", exc) from exc
        return DaskTaskRunner(address=cfg.runner_address or local_dask_address(workers))
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise _missing("ray", exc) from exc
    ensure_ray(cfg.runner_address, workers)  # RayTaskRunner finds Ray initialised: it neither starts nor stops it
    return RayTaskRunner(address=cfg.runner_address)


def with_runner(flow: F, cfg: PipelineConfig) -> F:
    """The flow with the configured task runner (the flow itself for the default thread pool)."""
    if cfg.runner == "threads" and cfg.runner_workers is None:
        return flow
    return flow.with_options(task_runner=task_runner(cfg))


def subflows_share_heartbeat(fn: C) -> C:
    """Decorate a flow's function (under `@flow`): the subflows it calls send no heartbeats of their own.

    A subflow runs in its parent's process, whose heartbeat already tells the server that the process is alive. Prefect
    3.8 stops a flow run's heartbeat thread by joining it, and the thread sleeps in 1 s steps: without this, every
    subflow's exit waits up to 1 s (a no-op flow run takes 1.1 s, 0.1 s without its heartbeat).
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return fn(*args, **kwargs)

    return cast(C, run)


# Work directories whose lock a flow of this context holds: sub-flows (in this thread, or in a helper thread that
# runs with a copy of this context) run under it instead of waiting for it.
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("coderflow_held_workdirs", default=frozenset())


def held_workdirs() -> frozenset[str]:
    """The work directories a flow of this context holds the lock of."""
    return _HELD.get()


@contextlib.contextmanager
def holding(workdir: str) -> Iterator[None]:
    """Mark `workdir`'s lock as held by this context while the block runs. (Flows reach the ContextVar only through
    these functions: a flow's function is pickled by task runners such as Dask, and a ContextVar cannot be.)"""
    token = _HELD.set(_HELD.get() | {workdir})
    try:
        yield
    finally:
        _HELD.reset(token)


def holds_workdir_lock(fn: C) -> C:
    """Decorate a flow's function (under `@flow`): it runs while holding its work directory's lock.

    The work directory is the `workdir` argument, or `config.workdir`. Flows nest in one thread (the lock is
    re-entrant there); another command on the same work directory waits and says so once (storage/lock.py).
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs).arguments
        given = bound.get("workdir") if "workdir" in signature.parameters else bound["config"].workdir
        workdir = str(Layout.at(given).root)
        if workdir in held_workdirs():  # a parent flow holds it (also for sub-flows it runs in helper threads)
            return fn(*args, **kwargs)
        with workdir_lock(workdir, f"flow {fn.__name__.replace('_', '-')}"), holding(workdir):
            return fn(*args, **kwargs)

    # Prefect builds the flow's parameter model from the annotations: resolve them in the flow's own module
    run.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return cast(C, run)
