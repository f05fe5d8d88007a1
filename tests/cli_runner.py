"""Run the `coderflow` command line in-process and capture what it prints (the real CLI, no subprocess)."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class CliResult:
    exit_code: int
    output: str  # standard output and standard error, in that order
    stdout: str


def run_cli(args: list[str], env: dict[str, str] | None = None) -> CliResult:
    """`coderflow *args` in this process (with `env` added to the environment meanwhile)."""
    from coderflow.cli import main

    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # --help and --version exit from the parser
                code = exc.code if isinstance(exc.code, int) else 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out.flush()
    stdout = out.buffer.getvalue().decode()  # type: ignore[attr-defined]
    return CliResult(code, stdout + err.getvalue(), stdout)
