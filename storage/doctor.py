"""`coderflow doctor`: find what is wrong in a work directory and repair what can be recomputed."""

from __future__ import annotations

from dataclasses import dataclass

from coderflow.storage.db import refresh_views, views_problem
from coderflow.storage.integrity import (
    dead_writer,
    is_recomputable,
    move_aside,
    problem,
    recorded_hash,
    stored_parquet_files,
    temp_files,
)
from coderflow.storage.layout import Layout, StoragePath
from coderflow.storage.runs import abandoned_runs, mark_abandoned
from coderflow.storage.shards import IMAGE_HASHES, INGEST_MARKER, SOURCE_LISTING, DamagedFile, read_json

DATASET_MARKER = "_dataset.json"  # storage/layout.py Layout.dataset_identity


@dataclass(frozen=True)
class Finding:
    """One problem: where, what is wrong, and what `--fix` does about it (None: nothing it may do)."""

    kind: str  # damaged | marker | views | temp | run
    path: StoragePath
    what: str
    fix: str | None

    def line(self, workdir: StoragePath) -> str:
        """The finding as one line, its path relative to the work directory."""
        where = str(self.path).removeprefix(str(workdir)).lstrip("/") or str(self.path)
        action = f"--fix {self.fix}" if self.fix else "not repairable here: kept as it is"
        return f"{self.kind}: {where}: {self.what}; {action}"


def _markers(layout: Layout) -> list[StoragePath]:
    shards = layout.root / "shards"
    if not shards.is_dir():
        return []
    found = list(shards.glob(f"*/{DATASET_MARKER}"))
    for name in (INGEST_MARKER, SOURCE_LISTING, IMAGE_HASHES):
        found += shards.glob(f"*/*/{name}")
    return sorted(found, key=str)


_MARKER_KINDS = {DATASET_MARKER: dict, INGEST_MARKER: dict, SOURCE_LISTING: dict, IMAGE_HASHES: list}


def _marker_problem(path: StoragePath) -> str | None:
    try:
        read_json(path, path.name, _MARKER_KINDS[path.name])  # the reader every command uses
    except DamagedFile as exc:
        return f"unreadable JSON ({' '.join(exc.reason.split())[:120]})"
    except OSError as exc:
        return f"unreadable JSON ({exc.strerror or exc})"
    return None


def diagnose(layout: Layout) -> tuple[list[Finding], int]:
    """Every problem found, and how many stored Parquet files were checked against their recorded hashes."""
    findings: list[Finding] = []
    for path in _markers(layout):
        if (what := _marker_problem(path)) is not None:
            what += ": its split counts as not ingested" if path.name != DATASET_MARKER else ""
            findings.append(Finding("marker", path, what, "moves it aside (the next run ingests the split again)"))
    files = stored_parquet_files(layout)
    for path in files:
        what = problem(path)
        if what is None:
            continue
        if is_recomputable(layout, path):
            findings.append(Finding("damaged", path, what, "moves it aside (the next run computes it again)"))
        elif recorded_hash(path) is not None:  # a run's result that changed: only running it again recomputes it
            findings.append(Finding("damaged", path, what + " (a run's result: run it again)", None))
    if (what := views_problem(layout)) is not None:
        findings.append(Finding("views", layout.database, what, "rebuilds it from the stored files"))
    for temp in temp_files(layout):
        if dead_writer(temp):
            findings.append(Finding("temp", temp.path, "left by a writer that no longer runs", "removes it"))
    for path, manifest in abandoned_runs(layout):
        what = f"run {manifest.get('run_id')} is recorded as running by a process that no longer exists"
        findings.append(Finding("run", path, what, "marks it crashed"))
    return findings, len(files)


def repair(layout: Layout, findings: list[Finding]) -> list[Finding]:
    """Apply each finding's fix; returns the findings fixed. Never deletes a result it cannot recompute."""
    fixed = []
    for f in findings:
        if f.fix is None:
            continue
        if f.kind in ("marker", "damaged") and f.path.exists():
            move_aside(f.path)
        elif f.kind == "temp":
            f.path.unlink(missing_ok=True)
        elif f.kind == "run":
            mark_abandoned(layout)
        elif f.kind == "views":
            refresh_views(layout)
        fixed.append(f)
    if any(f.kind in ("marker", "damaged") for f in fixed):
        refresh_views(layout)  # the views no longer list what was moved aside
    return fixed
