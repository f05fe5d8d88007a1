"""Prefect tasks for run bookkeeping: the run record (manifest) and refreshing the DuckDB views."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task

from coderflow.storage.db import refresh_views
from coderflow.storage.integrity import remove_dead_temp_files
from coderflow.storage.layout import Layout
from coderflow.storage.runs import mark_abandoned, write_run


@task(name="record-run")
def record_run(
    run_id: str,
    workdir: str,
    *,
    flow: str,
    status: str,
    started_at: datetime,
    config: dict[str, Any],
    dataset: str | None = None,
    model_id: str | None = None,
    textbank_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write the run's manifest.json and run.parquet (finished_at is set unless the run is still running). Starting a
    run first marks runs abandoned by a dead process of this host as crashed and removes the temp files of dead
    writers."""
    layout = Layout.at(workdir)
    if status == "running":
        remove_dead_temp_files(layout)  # what killed writers left behind (this run holds the work-directory lock)
        for crashed in mark_abandoned(layout):
            get_run_logger().warning("run %s was abandoned by a process that no longer exists: marked crashed", crashed)
    finished = None if status == "running" else datetime.now(UTC)
    path = write_run(
        layout, run_id, flow=flow, status=status, started_at=started_at, config=config,
        dataset=dataset, model_id=model_id, textbank_id=textbank_id, extra=extra, finished_at=finished,
    )  # fmt: skip
    return str(path)


MANIFEST_FIELDS = frozenset(
    {
        "run_id",
        "flow",
        "status",
        "started_at",
        "finished_at",
        "dataset",
        "model_id",
        "textbank_id",
        "config",
        "versions",
    }
)


@task(name="record-parent-run")
def record_parent_run(
    run_id: str, workdir: str, *, flow: str, started_at: datetime, flow_run_id: str | None = None
) -> str:
    """Record a finished sub-flow's run (a pipeline's classify) as its parent's: the parent's flow name, start and
    flow run, so `coderflow runs` shows the whole duration; the sub-flow's own flow run id stays in the record
    (`<sub-flow>_flow_run_id`)."""
    layout = Layout.at(workdir)
    manifest = json.loads(layout.run_file(run_id, "manifest.json").read_text())
    extra = {k: v for k, v in manifest.items() if k not in MANIFEST_FIELDS}
    extra[f"{manifest['flow']}_flow_run_id"] = extra.get("flow_run_id")
    extra["flow_run_id"] = flow_run_id
    path = write_run(
        layout, run_id, flow=flow, status=manifest["status"], started_at=started_at, config=manifest["config"],
        dataset=manifest.get("dataset"), model_id=manifest.get("model_id"), textbank_id=manifest.get("textbank_id"),
        extra=extra, finished_at=datetime.now(UTC),
    )  # fmt: skip
    return str(path)


@task(name="refresh-database")
def refresh_database(workdir: str) -> str:
    """Recreate the DuckDB views over everything now stored."""
    return str(refresh_views(Layout.at(workdir)))
