"""The work-directory lock: one writing coderflow command at a time per work directory; the others wait.

On one machine an OS file lock decides. At an s3:// URL a lease object `<workdir>/.coderflow.lock` in the bucket
decides across machines too: created only if absent (a conditional write), refreshed by a heartbeat, deleted on
release, and taken over by a waiter once its heartbeat is older than $CODERFLOW_LOCK_TTL seconds (a crashed holder).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from coderflow.storage.layout import Layout, StoragePath, content_id, is_local, local_cache_dir, shared_mode

LOCK_NAME = ".coderflow.lock"
ENV_TIMEOUT = "CODERFLOW_LOCK_TIMEOUT"
ENV_TTL = "CODERFLOW_LOCK_TTL"
DEFAULT_TTL = 120.0
LEASE_PROTOCOLS = ("s3", "s3a")  # stores with conditional writes (If-None-Match / If-Match) through fsspec

log = logging.getLogger("coderflow")


def lock_file(workdir: str | os.PathLike[str] | StoragePath) -> Path:
    """The lock file of a work directory: `<workdir>/.coderflow.lock`, or one in the local cache for a URL."""
    layout = Layout.at(workdir)
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


def lease_ttl() -> float:
    """Seconds without a heartbeat after which a lease in the store counts as abandoned ($CODERFLOW_LOCK_TTL)."""
    raw = os.environ.get(ENV_TTL, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TTL
    except ValueError:
        seconds = -1.0
    if not seconds > 0:  # also refuses nan
        raise ValueError(f"{ENV_TTL}={raw!r} is not a number of seconds > 0: unset it for {DEFAULT_TTL:g}")
    return seconds


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    log.info(message)  # INFO: with no handler configured, a WARNING would reach stderr a second time


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


def _describe(info: Any) -> str:
    """`pid 123 (flow run, since 14:02:11)`, `pid 123 on host-b (...)` for a lease; `another process` if unusable."""
    try:
        pid, what, since = int(info["pid"]), str(info["what"]), float(info["since"])
        host = f" on {info['host']}" if "host" in info else ""
        return f"pid {pid}{host} ({what}, since {time.strftime('%H:%M:%S', time.localtime(since))})"
    except (ValueError, TypeError, KeyError, OverflowError):
        return "another process"


def _holder(path: Path) -> str:
    """Who holds the local lock, from its sidecar."""
    try:
        return _describe(json.loads(_sidecar(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return "another process"


def _refusal(workdir: StoragePath, holder: str, timeout: float | None) -> TimeoutError:
    waited = "" if timeout is None else f" after {timeout:g} s"
    return TimeoutError(
        f"work directory {workdir} is still in use by {holder}{waited}: try again when it finishes, or raise {ENV_TIMEOUT}"
    )


def _node() -> str | None:
    """This kernel boot and PID namespace (Linux): the processes whose pids this process can check."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _gone(pid: Any) -> bool:
    """Whether no process has this pid (here); False when unsure."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: it exists
        return False
    return False


def _precondition_failed(exc: OSError) -> bool:
    """Whether s3fs's error says a conditional write did not happen: S3's 412 (the If-None-Match or If-Match did not
    hold) or 409 ConditionalRequestConflict (another conditional write of the key at the same moment)."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict")


class Lease:
    """The lease object `<workdir>/.coderflow.lock` in an S3 bucket: who writes the work directory, across hosts.

    It holds JSON {host, pid, what, since, heartbeat, node, token}. Every write is conditional: create if absent
    (If-None-Match: *), heartbeat and take-over only over the ETag last seen (If-Match), so of two writers racing
    for it exactly one wins, and a holder whose lease was taken over notices at its next heartbeat.
    """

    def __init__(self, workdir: StoragePath, what: str, ttl: float) -> None:
        self.workdir, self.ttl = workdir, ttl
        self.fs = workdir.fs  # type: ignore[union-attr]
        self.bucket, self.key, _ = self.fs.split_path(f"{workdir.path}/{LOCK_NAME}")  # type: ignore[union-attr]
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "what": what, "since": time.time()}
        self.info["node"] = _node()  # a waiter on the same node may check whether the holder's pid still runs
        self.info["token"] = uuid.uuid4().hex  # tells our own lease apart (e.g. after a retried create)
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @classmethod
    def at(cls, workdir: StoragePath, what: str) -> Lease | None:
        """The lease of a work directory at an s3:// URL; None where the store has no conditional writes."""
        if is_local(workdir) or workdir.protocol not in LEASE_PROTOCOLS or not hasattr(workdir.fs, "call_s3"):
            return None
        return cls(workdir, what, lease_ttl())

    def _put(self, **condition: str) -> str | None:
        """Write the lease (fresh heartbeat) if `condition` holds: the new ETag, or None if it did not hold."""
        body = json.dumps(self.info | {"heartbeat": time.time()}).encode()
        try:
            return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except FileNotFoundError:
            if "IfMatch" in condition:  # the lease was deleted meanwhile: it is not the one we saw
                return None
            raise
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise
        finally:
            self.fs.invalidate_cache(f"{self.bucket}/{self.key}")  # listings of the work directory stay true

    def read(self) -> tuple[str, float, dict[str, Any]] | None:
        """The current lease: (ETag, seconds since its last write by the store's clock, its JSON); None if absent."""

        async def get() -> tuple[dict[str, Any], bytes]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return resp, await resp["Body"].read()
            finally:
                resp["Body"].close()

        from fsspec.asyn import sync

        try:
            resp, body = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        try:
            info = json.loads(body)
        except ValueError:
            info = {}
        return resp["ETag"], now - resp["LastModified"].timestamp(), info if isinstance(info, dict) else {}

    def try_acquire(self) -> tuple[bool, str]:
        """Create the lease, or take over an abandoned one: (got it, who holds it otherwise)."""
        for _ in range(3):  # a lease released between the create and the read: try again at once
            self.etag = self._put(IfNoneMatch="*")
            if self.etag is not None:
                return True, ""
            current = self.read()
            if current is not None:
                break
        else:
            return False, "another process"
        etag, age, info = current
        if info.get("token") == self.info["token"]:  # our own create, retried after a lost response
            self.etag = etag
            return True, ""
        holder = _describe(info)
        if age > self.ttl:
            why = f"whose last heartbeat was {age:.0f} s ago ({ENV_TTL}={self.ttl:g}; the holder probably crashed)"
        elif self.info["node"] and info.get("node") == self.info["node"] and _gone(info.get("pid")):
            why = "a process of this machine that is gone"
        else:
            return False, holder
        self.etag = self._put(IfMatch=etag)  # of two waiters taking it over, one wins
        if self.etag is None:
            return False, holder
        _say(f"work directory {self.workdir}: took over the lease of {holder}, {why}")
        return True, ""

    def acquire(self, timeout: float | None, total: float | None) -> None:
        """Wait for the lease (polling every 1-2 s, saying once who holds it); TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        said = False
        while True:
            got, holder = self.try_acquire()
            if got:
                break
            if not said:
                _say(f"work directory {self.workdir} is in use by {holder}: waiting for it to finish")
                said = True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _refusal(self.workdir, holder, total)
            pause = 1.0 + random.random()  # jitter: waiters of several hosts do not poll in step
            time.sleep(pause if left is None else min(pause, left))
        self._heartbeat = threading.Thread(target=self._beat, name="coderflow-lease-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                etag = self._put(IfMatch=self.etag) if self.etag else None
                current = None if etag else self.read()
            except OSError as exc:  # the store is unreachable for now: the next beat tries again
                log.warning("work directory %s: could not refresh the lock's heartbeat: %s", self.workdir, exc)
                continue
            if current is not None and current[2].get("token") == self.info["token"]:
                etag = current[0]  # still ours (the write clashed with another attempt): carry on
            if etag is None:
                self.lost = True
                _say(
                    f"work directory {self.workdir}: this command lost its lock to another one (its heartbeat had not "
                    f"reached the store for {self.ttl:g} s); what it writes from now on may clash with that command's"
                )
                return
            self.etag = etag

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.lost or self.etag is None:
            return
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not _precondition_failed(exc):  # a store without conditional deletes: delete it if still ours
                current = self.read()
                if current is not None and current[0] == self.etag:
                    self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
        finally:
            self.fs.invalidate_cache(f"{self.bucket}/{self.key}")


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike[str] | StoragePath, what: str) -> Iterator[Path]:
    """Hold the work directory's lock while the block runs; wait (saying so once) while another holder has it.

    Re-entrant in one thread (a flow and the sub-flows it calls each take it); another thread or process waits.
    On one machine the OS lock (flock) decides who holds it, so a killed holder never blocks the next one; at an
    s3:// URL the outermost hold also takes the store's `Lease`, so processes on other hosts wait too. `what` names
    the holder's command in the waiter's message. $CODERFLOW_LOCK_TIMEOUT (seconds) bounds the wait: TimeoutError.
    """
    layout = Layout.at(workdir)
    path = lock_file(layout.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout()
    start = time.monotonic()
    # One instance per path in this process; holds are per thread. preserve_lock_file: the lock file is never
    # deleted (deleting it races with a waiter) and there is no soft-lock fallback whose stale marker could block.
    lock = FileLock(path, thread_local=True, is_singleton=True, preserve_lock_file=True)
    outermost = not lock.is_locked
    try:
        lock.acquire(blocking=False)
    except Timeout:
        _say(f"work directory {layout.root} is in use by {_holder(path)}: waiting for it to finish")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise _refusal(layout.root, _holder(path), timeout) from None
    try:
        lease = Lease.at(layout.root, what) if outermost else None
        if lease is not None:
            lease.acquire(None if timeout is None else timeout - (time.monotonic() - start), timeout)
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
                if lease is not None:  # also before the OS lock goes: a waiter of this host then finds it gone
                    lease.release()
    finally:
        lock.release()
