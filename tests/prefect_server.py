"""A real `prefect server start` subprocess (SQLite in a temporary PREFECT_HOME, offline) and helpers around it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of every Prefect process of a test: its own home, no analytics, quick polling."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@dataclass
class Process:
    """A subprocess in its own process group, logging to a file."""

    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)


def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> Process:
    out = log.open("ab")
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return Process(proc, log)


@dataclass
class PrefectServer:
    """A running server: its URLs, home and the environment that points a Prefect process at it."""

    home: Path
    port: int
    process: Process
    children: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def env(self) -> dict[str, str]:
        return offline_env(self.home, self.api_url)

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """A `prefect ...` command against this server (from the repository root); fails with its output."""
        done = subprocess.run(
            [PREFECT, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode:
            raise AssertionError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def start(self, name: str, *args: str) -> Process:
        """A long-running `prefect ...` (a worker), stopped with the server."""
        p = spawn([PREFECT, *args], self.env, self.home / f"{name}.log")
        self.children.append(p)
        return p


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def prefect_server(home: Path, timeout: float = 150):
    """Start `prefect server start` on a free port and wait until /api/health answers; stop it (and children) after."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    env = offline_env(home) | {"PREFECT_SERVER_UI_API_URL": f"http://127.0.0.1:{port}/api"}  # the UI's API
    process = spawn(args, env, home / "server.log")
    server = PrefectServer(home, port, process)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(server.url):
            if process.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start in {timeout:.0f} s:\n{process.tail()}")
            time.sleep(0.5)
        yield server
    finally:
        for child in reversed(server.children):
            child.stop()
        process.stop()
