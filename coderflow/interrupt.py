"""A process-wide stop token set by Ctrl-C or SIGTERM: work in threads (LLM requests) sends nothing new after it."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_current = threading.Event()


def stop_token() -> threading.Event:
    """The token that the next stop request sets; a generator takes it when it starts and checks it before each
    request, retry and back-off sleep (a token once set stays set; later work gets a fresh one)."""
    with _lock:
        return _current


def request_stop() -> None:
    """Stop the work holding the current token (a signal arrived); work started after this gets a fresh token."""
    global _current
    with _lock:
        _current.set()
        _current = threading.Event()
