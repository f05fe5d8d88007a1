"""A local S3-compatible HTTP server (moto's server mode, loopback only) for the s3:// work-directory tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(cache_dir: Path, secret: str) -> Iterator[Any]:
    """Start the server; credentials, endpoint and a cache folder go in the environment (as on a cluster) while it
    runs. Yields an s3fs file system on it. Cached s3fs clients are dropped before and after: none calls another
    test's (stopped) server."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    import s3fs

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "XDG_CACHE_HOME": str(cache_dir),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(endpoint, timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            s3fs.S3FileSystem.clear_instance_cache()
            yield s3fs.S3FileSystem(skip_instance_cache=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
            s3fs.S3FileSystem.clear_instance_cache()
