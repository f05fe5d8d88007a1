"""Run bookkeeping shared by the flows: the work directory, run records, DuckDB refreshes, stage timings, inputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import task

from coderflow.config import PipelineConfig
from coderflow.flows import uptodate
from coderflow.storage.layout import Layout
from coderflow.tasks.runs import record_run, refresh_database


def resolved_workdir(workdir: str | None) -> str:
    """The work directory a flow works in: `workdir`, else the default ($CODERFLOW_HOME or ./coderflow-data)."""
    return str(Layout.at(workdir).root)


def flow_run_id() -> str | None:
    """The id of the flow run this code runs in (for the UI link)."""
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


@contextmanager
def recorded_run(run_id: str, workdir: str, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Record a run as running, then completed or failed (refreshing DuckDB either way); yields its `extra` dict.
    The Prefect flow run's id goes into the record (`coderflow runs` links it)."""
    record = {**record, "extra": {**record.get("extra", {}), "flow_run_id": flow_run_id()}}
    record_run(run_id, workdir, status="running", **record)
    try:
        yield record["extra"]
    except BaseException:
        _while_failing(lambda: record_run.fn(run_id, workdir, status="failed", **record), "recording the failed run")
        _while_failing(lambda: refresh_database.fn(workdir), "refreshing the DuckDB views")
        raise
    record_run(run_id, workdir, status="completed", **record)
    refresh_database(workdir)


def refresh_unless_subflow(workdir: str) -> None:
    """Refresh the DuckDB views at the end of a stage run on its own; inside a parent flow the parent's run record
    refreshes them once (`recorded_run`), or `refreshed_on_error` when the parent fails first."""
    from prefect.runtime import flow_run

    if not flow_run.parent_flow_run_id:
        refresh_database(workdir)


def _while_failing(step: Callable[[], Any], what: str) -> None:
    """A clean-up step of a failing flow: its own failure (the same full disk, say) is logged, never raised, so the
    error the user sees is the one that stopped the flow."""
    try:
        step()
    except Exception as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split()) or type(exc).__name__
        logging.getLogger(__name__).warning("%s failed too (%s); the first error follows", what, reason)


@contextmanager
def refreshed_on_error(workdir: str) -> Iterator[None]:
    """A parent flow that fails before its run record still leaves views over what its stages stored."""
    try:
        yield
    except BaseException:
        _while_failing(lambda: refresh_database.fn(workdir), "refreshing the DuckDB views")
        raise


@contextmanager
def timed(stages: dict[str, float], name: str) -> Iterator[None]:
    """Seconds spent in a block, stored under `name`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = round(time.perf_counter() - start, 2)


@task(name="record-inputs")
def record_inputs(run_id: str, config: PipelineConfig) -> str | None:
    """Store the fingerprint of the finished run's inputs in its manifest (an unchanged CLI re-run then skips)."""
    return uptodate.record_inputs(run_id, config)
