"""Trust in stored files: content hashes checked before use, damaged files moved aside, dead writers' temp files."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from coderflow.storage.atomic import checksum_path
from coderflow.storage.layout import Layout, StoragePath, file_sha256, is_local
from coderflow.storage.runs import process_alive

log = logging.getLogger("coderflow")

DAMAGED_SUFFIX = ".damaged"  # `<file>.damaged`: a file that failed its check, kept for inspection, never read
# temp files of atomic writes (`.<name>.pid<pid>.<random>.tmp`) and of view rebuilds (`.<db>.<pid>.<thread>.tmp`)
_TEMP = re.compile(r"^\..*\.(?:pid(?P<pid>\d+)\.[^.]*|(?P<dbpid>\d+)\.\d+)\.tmp(?:\.wal)?$")
ORPHAN_AGE_S = 3600.0  # a temp file that names no process is a dead writer's once it is this old


def recorded_hash(path: StoragePath) -> str | None:
    """The sha256 recorded when the file was written (its `<name>.sha256`), or None."""
    try:
        text = checksum_path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


@lru_cache(maxsize=4096)
def _matches(path: str, size: int, mtime_ns: int, recorded: str) -> bool:
    return file_sha256(path) == recorded  # cached per file version: a pipeline checks each file once


def problem(path: StoragePath) -> str | None:
    """What is wrong with a stored file, or None when its bytes match the hash recorded when it was written."""
    recorded = recorded_hash(path)
    if recorded is None:
        return f"no recorded content hash ({checksum_path(path).name} missing or unreadable)"
    try:
        if is_local(path):
            st = path.stat()
            ok = _matches(str(path), st.st_size, st.st_mtime_ns, recorded)
        else:
            ok = file_sha256(path) == recorded
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if ok else f"content differs from the sha256 recorded when it was written ({recorded[:12]}...)"


def move_aside(path: StoragePath) -> StoragePath:
    """Rename a damaged file to `<name>.damaged` (replacing an older one) and drop its recorded hash."""
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    if not is_local(path) and aside.exists():
        aside.unlink()
    path.replace(aside) if is_local(path) else path.rename(aside)
    sidecar = checksum_path(path)
    if sidecar.exists():
        sidecar.unlink()
    return aside


def intact(path: StoragePath) -> bool:
    """Whether a stored file exists and holds what was written. A damaged one is named in a warning and moved
    aside, so the caller computes it again instead of using it."""
    if not path.exists():
        return False
    found = problem(path)
    if found is None:
        return True
    aside = move_aside(path)
    log.warning("%s is damaged (%s): moved aside to %s and computed again", path, found, aside.name)
    return False


def require_intact(path: StoragePath, fix: str) -> StoragePath:
    """The file, if intact; else FileNotFoundError naming it and `fix` (the command that recomputes it)."""
    if not intact(path):
        raise FileNotFoundError(f"{path} is missing or was damaged (moved aside): {fix}")
    return path


@dataclass(frozen=True)
class TempFile:
    path: StoragePath
    pid: int | None


def temp_files(layout: Layout) -> Iterator[TempFile]:
    """Temp files of atomic writes and view rebuilds anywhere in a local work directory."""
    if not layout.is_local or not layout.root.is_dir():
        return
    for path in layout.root.rglob(".*.tmp*"):
        match = _TEMP.match(path.name)
        if match and path.is_file():
            pid = match["pid"] or match["dbpid"]
            yield TempFile(path, int(pid) if pid else None)


def dead_writer(temp: TempFile, now: float | None = None) -> bool:
    """Whether the process that wrote a temp file is gone (one that names no process: when it is over an hour old)."""
    if temp.pid is not None:
        return not process_alive({"pid": temp.pid})
    try:
        return (now or time.time()) - temp.path.stat().st_mtime > ORPHAN_AGE_S
    except OSError:
        return False


def remove_dead_temp_files(layout: Layout) -> list[StoragePath]:
    """Delete the temp files that killed writers left behind; returns them."""
    removed = []
    for temp in temp_files(layout):
        if dead_writer(temp):
            temp.path.unlink(missing_ok=True)
            removed.append(temp.path)
    if removed:
        log.info("removed %d temp files of writers that no longer run", len(removed))
    return removed


def stored_parquet_files(layout: Layout) -> list[StoragePath]:
    """Every Parquet file the views read (derived files and run results), each checked by `problem`."""
    files: set[StoragePath] = set()
    for pattern in layout.view_globs().values():
        rel = pattern.removeprefix(str(layout.root)).lstrip("/")
        files.update(p for p in layout.root.glob(rel) if p.is_file())
    return sorted(files, key=str)


def is_recomputable(layout: Layout, path: StoragePath) -> bool:
    """Whether coderflow recomputes this file when it is missing (everything but a run's results)."""
    return not str(path).startswith(str(layout.runs_dir))
