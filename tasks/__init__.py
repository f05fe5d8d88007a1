"""Prefect tasks (thin wrappers over pure functions) and the retry and run-naming rules they share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any


class ConfigError(RuntimeError):
    """A setting the user must fix (a bad API key, an unknown model): retrying cannot help."""


# A user's mistake (bad input, a missing file, a refused setting) fails the same way every time: never retried.
DETERMINISTIC = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError, ConfigError)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A task's `retry_condition_fn`: retry only errors that may pass (I/O hiccups, timeouts), not deterministic ones."""
    try:
        state.result()
    except DETERMINISTIC:
        return False
    except Exception:
        return True
    return True


def shard_name(path: str) -> str:
    """A shard's name from its path or from a file derived from it: '.../demo-test-000003.tar' and
    '.../demo-test-000003.<sha256[:16]>.parquet' both give 'demo-test-000003' (URLs too)."""
    return PurePosixPath(str(path)).name.split(".")[0]


def named_after_shard(task_name: str, parameter: str) -> Callable[..., str]:
    """A `task_run_name` callable naming each run after the shard in `parameter`: 'embed-shard demo-test-000003'."""

    def name(parameters: dict[str, Any]) -> str:
        return f"{task_name} {shard_name(parameters[parameter])}"

    return name
