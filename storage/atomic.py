"""Atomic file writes: a temp file beside the target (or local, for a URL) published in one step, and the
`<file>.sha256` hashes recorded beside stored files."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from coderflow.storage.layout import StoragePath, is_local, shared_mode, storage_path


def publish_file(local_file: Path, target: StoragePath) -> None:
    """Make a finished local file the target in one step: a rename beside it, or one upload to a URL."""
    if is_local(target):
        os.replace(local_file, target)
    else:
        target.fs.put_file(str(local_file), target.path)


def temp_prefix(name: str) -> str:
    """`.<name>.pid<pid>.`: a temp file says which process writes it, so one left by a dead writer can be removed
    (storage/integrity.py, `coderflow doctor --fix`)."""
    return f".{name}.pid{os.getpid()}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str] | StoragePath) -> Iterator[Path]:
    """Yield a local temp path; on success publish it as the target in one step, else delete it.

    Local targets: the temp file sits beside the target and is renamed onto it. URL targets (s3://, gs://, ...):
    the temp file is local and uploaded in one put, which object stores publish whole or not at all.
    """
    target = storage_path(target)
    local = is_local(target)
    if local:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent if local else None
    )
    os.close(fd)
    tmp = Path(tmp_name)
    shared_mode(tmp)  # the umask's permissions, not mkstemp's 0600
    try:
        try:
            yield tmp
        except Exception as exc:  # writers that wrap the OS error (polars: ComputeError "... os error 28")
            if isinstance(exc, OSError) or ("os error 28" not in str(exc) and "No space left" not in str(exc)):
                raise
            raise OSError(errno.ENOSPC, "No space left on device") from exc
        publish_file(tmp, target)
    except OSError as exc:  # disk full, quota, permissions: say which file, leave no partial one behind
        if exc.errno == errno.ENOSPC:
            raise OSError(exc.errno, f"could not write {target}: {no_space_message(tmp, target)}") from exc
        if str(target) in str(exc):
            raise
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise (
            OSError(exc.errno, f"could not write {target}: {reason}")
            if exc.errno
            else OSError(f"could not write {target}: {reason}")
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def no_space_message(tmp: Path, target: StoragePath) -> str:
    """'No space left on device (N MiB written before it ran out, M MiB free): ...' for a write that filled the disk."""
    written = tmp.stat().st_size if tmp.exists() else 0
    try:
        free = shutil.disk_usage(tmp.parent if tmp.exists() else Path(str(target)).parent).free
    except OSError:
        free = 0
    return (
        f"No space left on device ({written / 2**20:.1f} MiB written before it ran out, {free / 2**20:.1f} MiB "
        "free): free more than that, or put the work directory elsewhere (--workdir)"
    )


CHECKSUM_SUFFIX = ".sha256"  # `<file>.sha256` beside every Parquet file, in `sha256sum -c` format


def checksum_path(path: str | os.PathLike[str] | StoragePath) -> StoragePath:
    """The file that records a stored file's content hash: `<name>.sha256` beside it."""
    path = storage_path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def record_checksum(path: str | os.PathLike[str] | StoragePath, digest: str) -> None:
    """Record the sha256 of a file about to be published as `path` (`<name>.sha256` beside it)."""
    path = storage_path(path)
    write_text(f"{digest}  {path.name}\n", checksum_path(path))


def write_text(text: str, target: str | os.PathLike[str] | StoragePath) -> StoragePath:
    """Write a small text file (manifest, alias) atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return storage_path(target)


def write_text_if_changed(text: str, target: str | os.PathLike[str] | StoragePath) -> bool:
    """Write a small text file atomically unless it already holds exactly `text` (its mtime then stays); True if
    it was written."""
    path = storage_path(target)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(text, path)
    return True
