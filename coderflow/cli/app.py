"""The cyclopts application every command registers on, the options all commands share and the config loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from cyclopts import App, Parameter
from cyclopts.argument import ArgumentCollection
from cyclopts.config import Env
from pydantic import BaseModel
from rich.console import Console

from coderflow.cli.flags import command_options
from coderflow.config import PipelineConfig, build_config

console = Console()
err_console = Console(stderr=True)


@dataclass
class CommonOptions:
    """The options every command shares: a YAML file under the flags, and how much Prefect logs."""

    config: Path | None = None
    verbose: bool = False


COMMON = CommonOptions()


def load_config(options: BaseModel | None, **fixed: Any) -> PipelineConfig:
    """Defaults < YAML file (-c) < environment (CODERFLOW_*) < flags, validated once; errors name the key."""
    given = options.model_dump(exclude_none=True) if options is not None else {}
    return build_config(COMMON.config, given, fixed)


class ConfigEnv(Env):
    """CODERFLOW_<KEY> environment variables for config settings only (and --workdir): a command's own options
    (`compare --methods A,B`) never read the variable of a setting with the same name (CODERFLOW_METHODS)."""

    def __call__(self, app: Any, commands: tuple[str, ...], arguments: Any) -> None:
        chosen = ArgumentCollection([a for a in arguments if a.keys or a.name == "--workdir"])
        super().__call__(app, commands, chosen)


app = App(
    name="coderflow",
    help="CLIP classification with CODER, run as Prefect flows. Every setting is a flag named by its config key "
    "(--dataset.source, --texts.llm.timeout); precedence: flags > CODERFLOW_* environment > YAML file (-c) > defaults.",
    version=version("coderflow"),
    config=[ConfigEnv("CODERFLOW_", command=False)],
    default_parameter=Parameter(show_env_var=False),
)


def command(name: str, parent: App = app, default: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as `coderflow <name>` with the flags of its config sections (COMMAND_SECTIONS)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        options = command_options(name)
        if options is not None:
            fn.__annotations__["options"] = Annotated[Optional[options], Parameter(name="*")]  # noqa: UP045
        if default:
            parent.default(fn)
        else:
            parent.command(fn, name=name.split()[-1])
        return fn

    return register


# Parameter types the commands share (string annotations: each command module imports the ones it names).
Options = Any  # replaced per command by its generated options model (see `command`)
Force = Annotated[bool, Parameter(negative="", help="run even when the newest run had the same config and inputs")]
TextBank = Annotated[Optional[str], Parameter(help="text bank id (default: the dataset's newest)")]  # noqa: UP045
Format = Annotated[Literal["dclip", "cupl", "clip-benchmark"], Parameter(name="--format", help="file format")]
Workdir = Annotated[Optional[str], Parameter(help="work directory")]  # noqa: UP045
TableFormat = Annotated[Literal["table", "json"], Parameter(name="--format")]
