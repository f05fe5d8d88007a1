"""Run records: the manifest (config, model, versions, commit) as JSON and as a one-row Parquet for `runs`."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from coderflow.storage.atomic import write_text
from coderflow.storage.layout import Layout, StoragePath, safe_name
from coderflow.storage.parquet_io import write_rows
from coderflow.storage.schemas import RUNS

_PACKAGES = (
    "coderflow",
    "torch",
    "torchvision",
    "open_clip_torch",
    "prefect",
    "duckdb",
    "pyarrow",
    "polars",
    "numpy",
    "webdataset",
)


def new_run_id(name: str | None = None) -> str:
    """`<UTC time>-<run name, made safe for paths>-<random>`: a run name never reaches a path or SQL as given."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    safe = safe_name(name) if name and any(c.isalnum() for c in name) else ""
    return f"{stamp}-{safe + '-' if safe else ''}{uuid.uuid4().hex[:6]}"


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def write_run(
    layout: Layout,
    run_id: str,
    *,
    flow: str,
    status: str,
    started_at: datetime,
    config: dict[str, Any],
    dataset: str | None = None,
    model_id: str | None = None,
    textbank_id: str | None = None,
    extra: dict[str, Any] | None = None,
    finished_at: datetime | None = None,
) -> Path:
    """Write (or overwrite) the run's manifest.json and run.parquet atomically; a running run records its process
    (host, pid, start time), so that a later run can tell it was abandoned (see `mark_abandoned`)."""
    if status == "running":
        extra = {**(extra or {}), "process": this_process()}
    manifest = {
        "run_id": run_id,
        "flow": flow,
        "status": status,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat() if finished_at else None,
        "dataset": dataset,
        "model_id": model_id,
        "textbank_id": textbank_id,
        "config": config,
        "versions": versions(),
        **(extra or {}),
    }
    write_text(json.dumps(manifest, indent=2, default=str), layout.run_file(run_id, "manifest.json"))
    row = {
        "run_id": run_id,
        "flow": flow,
        "started_at": started_at,
        "finished_at": finished_at,
        "status": status,
        "dataset": dataset,
        "model_id": model_id,
        "textbank_id": textbank_id,
        "config": json.dumps({**config, **(extra or {})}, default=str),
        "versions": json.dumps(manifest["versions"]),
        "duration_s": (finished_at - started_at).total_seconds() if finished_at else None,
        "flow_run_id": (extra or {}).get("flow_run_id"),
    }
    write_rows([row], RUNS, layout.run_file(run_id, "run.parquet"))
    return layout.run_file(run_id, "manifest.json")


def _process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, Linux /proc), which tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def process_alive(process: dict[str, Any]) -> bool:
    """Whether the process recorded as {pid, start} (start: see _process_start) still runs on this host."""
    pid = int(process.get("pid") or 0)
    if pid <= 0:
        return True  # unknown: assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process with that pid exists
    start = _process_start(pid)
    return start is None or process.get("start") in (None, start)


def abandoned_runs(layout: Layout) -> list[tuple[StoragePath, dict[str, Any]]]:
    """(manifest path, manifest) of runs recorded as running by a process of this host that no longer exists; runs
    of other hosts are left out (their process cannot be checked from here)."""
    found = []
    host = socket.gethostname()
    for path in sorted(layout.runs_dir.glob("*/manifest.json")) if layout.runs_dir.exists() else []:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        process = manifest.get("process") or {}
        if manifest.get("status") == "running" and process.get("host") == host and not process_alive(process):
            found.append((path, manifest))
    return found


def mark_abandoned(layout: Layout) -> list[str]:
    """Mark the abandoned runs (killed, crashed machine; see abandoned_runs) `crashed`; returns their ids."""
    marked = []
    for _, manifest in abandoned_runs(layout):
        known = {"run_id", "flow", "status", "started_at", "finished_at", "dataset", "model_id", "textbank_id",
                 "config", "versions"}  # fmt: skip
        extra = {k: v for k, v in manifest.items() if k not in known} | {"crashed_detected_at": datetime.now(UTC)}
        write_run(
            layout, manifest["run_id"], flow=manifest["flow"], status="crashed",
            started_at=datetime.fromisoformat(manifest["started_at"]), config=manifest.get("config") or {},
            dataset=manifest.get("dataset"), model_id=manifest.get("model_id"),
            textbank_id=manifest.get("textbank_id"), extra=extra,
        )  # fmt: skip
        marked.append(manifest["run_id"])
    return marked
