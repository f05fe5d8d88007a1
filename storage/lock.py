"""The work-directory lock: one writing coderflow command at a time per work directory; the others wait."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from coderflow.storage.layout import Layout, StoragePath, content_id, local_cache_dir, shared_mode

LOCK_NAME = ".coderflow.lock"
ENV_TIMEOUT = "CODERFLOW_LOCK_TIMEOUT"

log = logging.getLogger("coderflow")


def lock_file(root: str | os.PathLike[str] | StoragePath) -> Path:
    """The lock file of a work directory: `<root>/.coderflow.lock`, or one in the local cache for a URL."""
    layout = Layout.at(root)
    if layout.is_local:
        return layout.root / LOCK_NAME
    return local_cache_dir() / "locks" / f"{content_id(str(layout.root), length=16)}.lock"


def lock_timeout() -> float | None:
    """Seconds to wait for a busy work directory ($CODERFLOW_LOCK_TIMEOUT), or None to wait as long as it takes."""
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ValueError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds >= 0: unset it to wait, or give e.g. 600")
    return seconds


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_holder(path: Path, what: str) -> None:
    """Say who holds the lock (pid, command, since when) in `<lockfile>.json`: temp file, then rename."""
    info = {"pid": os.getpid(), "what": what, "since": time.time()}
    with contextlib.suppress(OSError):  # the details are a courtesy to waiters: never fail a command over them
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        shared_mode(tmp)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(info, f)
            os.replace(tmp, _sidecar(path))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _holder(path: Path) -> str:
    """`pid 123 (coderflow run, since 14:02:11)` from the holder's sidecar; `another process` without a usable one."""
    try:
        info = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        pid, what, since = int(info["pid"]), str(info["what"]), float(info["since"])
        return f"pid {pid} ({what}, since {time.strftime('%H:%M:%S', time.localtime(since))})"
    except (OSError, ValueError, TypeError, KeyError, OverflowError):
        return "another process"


@contextlib.contextmanager
def workdir_lock(root: str | os.PathLike[str] | StoragePath, what: str) -> Iterator[Path]:
    """Hold the work directory's lock while the block runs; wait (saying so once) while another holder has it.

    Re-entrant in one thread (a flow and the sub-flows it calls each take it); another thread or process waits.
    The OS lock (flock) alone decides who holds it, so a killed holder never blocks the next one. `what` names the
    holder's command in the waiter's message. $CODERFLOW_LOCK_TIMEOUT (seconds) bounds the wait: TimeoutError.
    """
    layout = Layout.at(root)
    path = lock_file(layout.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout()
    # One instance per path in this process; holds are per thread. preserve_lock_file: the lock file is never
    # deleted (deleting it races with a waiter) and there is no soft-lock fallback whose stale marker could block.
    lock = FileLock(path, thread_local=True, is_singleton=True, preserve_lock_file=True)
    outermost = not lock.is_locked
    try:
        lock.acquire(blocking=False)
    except Timeout:
        message = f"work directory {layout.root} is in use by {_holder(path)}: waiting for it to finish"
        print(message, file=sys.stderr, flush=True)
        log.info(message)  # INFO: with no handler configured, a WARNING would reach stderr a second time
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            waited = "" if timeout is None else f" after {timeout:g} s"
            raise TimeoutError(
                f"work directory {layout.root} is still in use by {_holder(path)}{waited}: try again when it "
                f"finishes, or raise {ENV_TIMEOUT}"
            ) from None
    try:
        if outermost:
            _write_holder(path, what)
        yield path
    finally:
        try:
            if outermost:  # before the OS lock goes: after it, the sidecar may already be the next holder's
                with contextlib.suppress(OSError):
                    _sidecar(path).unlink()
        finally:
            lock.release()
