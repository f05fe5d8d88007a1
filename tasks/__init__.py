"""Prefect tasks (thin wrappers over pure functions) and the retry rule they share."""

from __future__ import annotations

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
