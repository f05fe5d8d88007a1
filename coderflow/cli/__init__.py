"""The `coderflow` command line: the launcher the console script calls, with its error handling and exit codes."""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from cyclopts import CycloptsError, Parameter
from cyclopts.exceptions import UnusedCliTokensError
from pydantic import ValidationError
from rich.markup import escape as markup_escape

from coderflow.cli.app import COMMON, app, err_console
from coderflow.cli.flags import COMMAND_SECTIONS, flag_name
from coderflow.config import describe_validation_error
from coderflow.console import printable, quiet_prefect
from coderflow.interrupt import request_stop
from coderflow.storage.db import QueryError
from coderflow.tasks import ConfigError

# Importing registers the commands; error messages list them in this order (the flows first, then the readers).
from coderflow.cli import run_commands  # noqa: F401  # isort: skip
from coderflow.cli import read_commands  # noqa: F401  # isort: skip
from coderflow.cli import suite_commands  # noqa: F401  # isort: skip

__all__ = ["COMMAND_SECTIONS", "app", "entry", "flag_name", "main"]

# Errors that are the user's to fix: bad values, missing files, refused queries and settings, a lock wait that ran out.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, QueryError, ConfigError, TimeoutError)


@app.meta.default
def _launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    config: Annotated[Path | None, Parameter(name=["--config", "-c"], help="YAML config file under the flags")] = None,
    verbose: Annotated[bool, Parameter(name=["--verbose", "-v"], negative="", help="show Prefect's task logs")] = False,
) -> Any:
    COMMON.config, COMMON.verbose = config, verbose
    if config is not None and not config.is_file():
        raise ValueError(f"config file {str(config)!r} not found: pass the path of a YAML file to -c")
    quiet_prefect(not verbose)
    return app(tokens)


def _one_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ValidationError):
        text = describe_validation_error(cause, "the flags")
    elif isinstance(exc, UnusedCliTokensError):
        text = f"unexpected argument(s) {' '.join(exc.unused_tokens)}: settings are flags, a YAML file goes after -c"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is None:  # coderflow's own message: no [Errno]
        text = " ".join(exc.strerror.split())
    else:
        text = " ".join(str(exc).split())
    return markup_escape(printable(text))  # a value or class name in the message may hold ESC or '[/]'


def _interrupt(signum: int, frame: Any) -> None:
    request_stop()  # threads still sending LLM requests send nothing more (no new request, no retry)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; expected errors print one line naming the input and the fix, and exit with code 2."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # SIGTERM ends a run like Ctrl-C
    try:
        return _main(tokens)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(tokens: list[str]) -> int:
    try:
        result = app.meta(
            tokens, print_error=False, exit_on_error=False, help_on_error=False, result_action="return_value"
        )
    except KeyboardInterrupt:
        request_stop()  # Ctrl-C: the threads still at work end before the process exits
        err_console.print("[bold red]interrupted[/]: finished files are kept, the rest is redone on the next run")
        return 130
    except CycloptsError as exc:
        err_console.print(f"[bold red]error:[/] {_one_line(exc)} (see --help)", highlight=False, soft_wrap=True)
        return 2
    except EXPECTED_ERRORS as exc:
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, soft_wrap=True)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0  # a command's exit code


def entry() -> None:
    """The console script."""
    sys.exit(main())
