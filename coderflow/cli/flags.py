"""Command-line flags generated from the typed config models: every setting is a flag named by its config key."""

from __future__ import annotations

import re
import types
from functools import cache
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from cyclopts import Parameter
from pydantic import BaseModel, BeforeValidator, create_model

from coderflow.config import FLAG_ALIASES, PipelineConfig
from coderflow.tasks.classify.zeroshot import SCORERS as ZERO_SHOT_SCORERS
from coderflow.tasks.fewshot.scorers import SCORERS as FEW_SHOT_SCORERS

UNIONS = (Union, types.UnionType)

# The config sections (fields of PipelineConfig) each command reads; its flags are exactly these sections' settings.
RUN = (
    "preset", "workdir", "dataset", "model", "texts", "coder", "classify", "methods", "templates", "max_failure_rate",
    "run_name", "runner", "runner_address", "runner_workers",
)  # fmt: skip
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "run": RUN,
    "demo": RUN,
    "ingest": ("workdir", "dataset"),
    "embed": ("workdir", "dataset", "model", "max_failure_rate"),
    "texts": ("preset", "workdir", "dataset", "model", "texts", "templates", "classify"),
    "texts import": ("workdir", "dataset", "model", "texts"),
    "coder": ("workdir", "dataset", "model", "coder"),
    "classify": ("preset", "workdir", "dataset", "model", "classify", "methods", "templates", "run_name"),
    "fewshot": (
        "preset",
        "workdir",
        "dataset",
        "model",
        "texts",
        "classify",
        "fewshot",
        "templates",
        "max_failure_rate",
        "run_name",
        "runner",
        "runner_address",
        "runner_workers",
    ),
    "adapter train": ("workdir", "dataset", "model", "adapter", "run_name"),
    "adapter overlap": ("workdir", "dataset", "model", "adapter", "max_failure_rate", "run_name"),
    "serve": tuple(PipelineConfig.model_fields),
    "suite": tuple(PipelineConfig.model_fields),  # the settings of every cell, over the suite file's
    "config": tuple(PipelineConfig.model_fields),
}


def flag_name(dotted: str) -> str:
    """The flag of a config key: 'texts.llm.max_tokens' -> '--texts.llm.max-tokens'."""
    return "--" + dotted.replace("_", "-")


def _split_commas(value: Any) -> Any:
    """List settings take repeated flags, several values, or one comma-separated value: 1,2,4."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    return [p.strip() for x in items for p in (x.split(",") if isinstance(x, str) else [x]) if str(p).strip()]


def _default_text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) if len(value) <= 8 else f"{len(value)} values"
    return str(value)


def _choices(dotted: str) -> Any:
    """Method names come from the registries, so `--help` lists them and a typo is refused while parsing."""
    if dotted == "methods":
        scorers = ZERO_SHOT_SCORERS
    elif dotted == "fewshot.methods":
        scorers = FEW_SHOT_SCORERS  # type: ignore[assignment]
    else:
        return None
    return tuple[Literal[tuple(scorers)], ...]  # type: ignore[valid-type]


def _leaf(dotted: str, field: Any) -> tuple[Any, Any]:
    annotation = _choices(dotted) or field.annotation
    inner = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in UNIONS else []
    base = inner[0] if len(inner) == 1 else annotation
    alias = FLAG_ALIASES.get(dotted, ())
    names = [flag_name(dotted), *([alias] if isinstance(alias, str) else alias)]
    help_text = re.sub(r"<(\w+)>", r"\1", field.description or "")
    default = field.get_default(call_default_factory=True)  # a default_factory's value (methods), not its marker
    if default is not None and not isinstance(default, dict):
        help_text += f" [default: {_default_text(default)}]"
    kwargs: dict[str, Any] = {"name": names, "help": help_text.strip(), "show_default": False, "show_env_var": True}
    if get_origin(base) is dict:
        base = str  # `k=v,k=v` or JSON, parsed by the config model
        kwargs["help"] += " (e.g. a=1,b=2)"
    elif get_origin(base) is tuple:
        fixed = Ellipsis not in get_args(base)  # (beta, alpha) pairs: one comma-separated value
        kwargs |= {"n_tokens": 1} if fixed else {"consume_multiple": True}
        kwargs["negative_iterable"] = ""  # no --empty-<flag>: an empty tuple is never a valid setting
        kwargs["help"] += " (comma-separated)"
        return Annotated[Optional[base], BeforeValidator(_split_commas), Parameter(**kwargs)], None  # noqa: UP045
    elif base is bool:
        kwargs["negative"] = ""
    return Annotated[Optional[base], Parameter(**kwargs)], None  # noqa: UP045 (a runtime type for pydantic)


@cache
def options_model(model: type[BaseModel], fields: tuple[str, ...] | None = None, prefix: str = "") -> type[BaseModel]:
    """A model of `model`'s settings with every field optional and unvalidated: what the user gave, nothing more.

    Flags are parsed into it (defaults and cross-field rules stay in the config model, applied once after the YAML
    file and environment are laid under the flags).
    """
    spec: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if fields is not None and name not in fields:
            continue
        dotted = prefix + name
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            sub = options_model(field.annotation, None, dotted + ".")
            spec[name] = (Annotated[Optional[sub], Parameter(name="*")], None)  # noqa: UP045
        else:
            spec[name] = _leaf(dotted, field)
    title = "Options" + "".join(p.title() for p in (prefix.strip(".") or model.__name__).split("."))
    return create_model(title, **spec)


def command_options(name: str) -> type[BaseModel] | None:
    """The options model of `coderflow <name>`: its config sections' settings (None for a command without any)."""
    fields = COMMAND_SECTIONS.get(name)
    if fields is None:
        return None
    return options_model(PipelineConfig, tuple(f for f in PipelineConfig.model_fields if f in fields))
