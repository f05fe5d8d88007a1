"""Typed configuration of every flow, with all defaults in one place; built from flags, YAML or parameters.

The sections (dataset, model, ...) are defined in coderflow/sections.py and imported from here like the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coderflow.fewshot_sections import AdapterConfig, FewShotConfig, default_fewshot_methods
from coderflow.presets.benchmarks import benchmark_preset
from coderflow.sections import (
    CODER_OVO_TEMPLATES,
    DATASET_ACTIONS,
    DEFAULT_MODEL,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    SPLIT_NAMES,
    TEXT_TYPES,
    ClassifyConfig,
    CoderConfig,
    DatasetConfig,
    LLMConfig,
    ModelConfig,
    TextsConfig,
    default_dataset_name,
    default_methods,
    parse_mapping,
    with_inferred_kind,
)
from coderflow.tasks.classify import zeroshot

__all__ = [
    "CODER_OVO_TEMPLATES",
    "DATASET_ACTIONS",
    "DEFAULT_MODEL",
    "FLAG_ALIASES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "SPLIT_NAMES",
    "TEXT_TYPES",
    "AdapterConfig",
    "ClassifyConfig",
    "CoderConfig",
    "DatasetConfig",
    "FewShotConfig",
    "LLMConfig",
    "ModelConfig",
    "PipelineConfig",
    "TextsConfig",
    "build_config",
    "default_dataset_name",
    "default_fewshot_methods",
    "default_methods",
    "describe_validation_error",
    "load_yaml",
    "merge_settings",
    "parse_mapping",
    "with_inferred_kind",
]

# Short names of the most used flags (each setting's own flag is its dotted key: --dataset.source); CLIP_benchmark's
# and open_clip's own spellings too (--model NAME, --dataset NAME, --dataset_root DIR).
FLAG_ALIASES: dict[str, str | tuple[str, ...]] = {
    "dataset.source": ("--source", "--dataset-root", "--dataset_root"), "dataset.kind": "--kind", "dataset.split": "--split",
    "dataset.split_ratio": "--split-ratio", "dataset.reingest": "--reingest", "dataset.replace": "--replace-dataset",
    "model.name": "--model", "dataset.name": "--dataset", "model.pretrained": "--pretrained", "model.device": "--device", "model.adapter": "--adapter",
    "texts.generator": "--generator", "fewshot.shots": "--shots", "fewshot.seeds": "--seeds",
    "dataset.benchmark": "--benchmark", "dataset.benchmark_base": "--benchmark-base",
}  # fmt: skip


def merge_settings(*layers: dict[str, Any]) -> dict[str, Any]:
    """Nested settings laid over each other (later layers win key by key); a source's kind is inferred if unset."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_settings(out[key], value)
            else:
                out[key] = value
    if isinstance(out.get("dataset"), dict):
        out["dataset"] = with_inferred_kind(out["dataset"])
    return out


class PipelineConfig(BaseModel):
    """The end-to-end pipeline: ingest, embed, classify, evaluate, load into DuckDB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(
        None, description="per-dataset protocol settings (coderflow/presets/<name>.yaml); explicit settings win"
    )
    workdir: str | None = Field(
        None, description="work directory (a path or fsspec URL); default $CODERFLOW_HOME, else ./coderflow-data"
    )
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    texts: TextsConfig = TextsConfig()
    coder: CoderConfig = CoderConfig()
    classify: ClassifyConfig = ClassifyConfig()
    fewshot: FewShotConfig = FewShotConfig()
    adapter: AdapterConfig = AdapterConfig()
    methods: tuple[str, ...] = Field(
        default_factory=lambda: default_methods(), description="zero-shot methods (tasks/classify/zeroshot.py)"
    )
    templates: tuple[str, ...] | None = Field(
        None, description="class-name templates with {c}; overrides the dataset's"
    )
    max_failure_rate: float = Field(0.1, ge=0.0, le=1.0, description="a stage fails above this share of bad rows")
    run_name: str | None = Field(None, description="the run's name in `coderflow runs` and the Prefect UI")
    runner: Literal["threads", "dask", "ray"] = Field("threads", description="task runner (flows/runners.py)")
    runner_address: str | None = Field(
        None, description="dask scheduler (tcp://host:8786) or ray address (ray://host:10001); None: a local cluster"
    )
    runner_workers: int | None = Field(None, ge=1, description="threads, or local dask/ray worker processes")

    @field_validator("methods")
    @classmethod
    def _registered(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        zeroshot.check_methods(v)
        return tuple(dict.fromkeys(v))

    @model_validator(mode="before")
    @classmethod
    def _split_names(cls, data: Any) -> Any:
        """Bare split shares ('0.5,0.2,0.3') name the few-shot splits in order (train, val, test by default; two
        shares when val is the test split)."""
        ds = data.get("dataset") if isinstance(data, dict) else None
        if isinstance(ds, dict) and isinstance(ds.get("split_ratio"), str):
            fs = data.get("fewshot") or {}
            fs = fs.model_dump() if isinstance(fs, BaseModel) else fs
            names = list(dict.fromkeys(fs.get(f"{k}_split") or k for k in SPLIT_NAMES))
            data = {**data, "dataset": {**ds, "split_ratio": parse_mapping(ds["split_ratio"], names, "--split-ratio")}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = benchmark_preset(data)  # --benchmark NAME: its dataset's preset, unless --preset is given
        if not isinstance(data, dict) or not data.get("preset"):
            return data
        from coderflow.presets import load_preset, merge_under

        given = {k: v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v for k, v in data.items()}
        return merge_under(load_preset(str(data["preset"]))["config"], given)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict, with a clear error when it is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} not found: pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {str(p)!r} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except yaml.YAMLError as exc:  # a syntax error, or a tag such as !!python/object that safe_load never builds
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        if isinstance(exc, yaml.constructor.ConstructorError):
            raise ValueError(
                f"config file {str(p)!r}{where}: {problem}: settings are plain values, remove the tag"
            ) from None
        raise ValueError(f"config file {str(p)!r} is not valid YAML{where} ({problem}): fix the syntax") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {str(p)!r} must hold a mapping of keys (dataset:, model:, ...), not {type(data).__name__}"
        )
    return data


def build_config(path: str | Path | None = None, *layers: dict[str, Any], **dotted: Any) -> PipelineConfig:
    """A PipelineConfig as the CLI builds one: defaults < YAML file < each nested layer < dotted keys
    (`**{"fewshot.shots": [1, 2]}`; None values are left out); errors name the key and the source."""
    flags: dict[str, Any] = {}
    for key, value in dotted.items():
        if value is None:
            continue
        node = flags
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    data = merge_settings(load_yaml(path) if path else {}, *layers, flags)
    try:
        return PipelineConfig(**data)
    except ValidationError as exc:
        where = f"{path} and the flags" if path and (layers or flags) else str(path) if path else "the flags"
        raise ValueError(describe_validation_error(exc, where)) from exc


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the key: 'dataset.kind: Input should be ...'."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        secret = any(str(part).endswith(("url", "key")) for part in err["loc"])  # never echo a URL or key back
        if isinstance(err.get("input"), str | int | float) and err["type"] != "extra_forbidden" and not secret:
            msg += f" (got {err['input']!r})"
        parts.append(f"{key}: {msg}")
    return f"invalid configuration in {source}: " + "; ".join(parts)
