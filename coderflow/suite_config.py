"""The suite file (datasets x models x text banks x methods, optionally few-shot), its checks and its cells."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coderflow.config import (
    DatasetConfig,
    LLMConfig,
    ModelConfig,
    PipelineConfig,
    TextsConfig,
    describe_validation_error,
    load_yaml,
    merge_settings,
)
from coderflow.sections import StrictSection
from coderflow.storage.layout import content_id
from coderflow.tasks.classify import zeroshot
from coderflow.tasks.fewshot import scorers

SUITE_KEY = "suite"
IMPORT_FORMATS = ("dclip", "cupl", "clip-benchmark")
DATASET_KEYS = (*DatasetConfig.model_fields, "preset")  # a dataset entry may carry its protocol preset
GENERATED = ("offline", "llm")  # the banks the few-shot flow can build (an imported bank is zero-shot only)


class SuiteError(ValueError):
    """A suite file that cannot run: one line naming the entry and the fix."""


class BankEntry(StrictSection):
    """A text bank of the grid: generated offline (WordNet) or by an LLM (texts.* / llm.* settings), or imported."""

    source: Literal["offline", "llm", "import"]
    texts: dict[str, Any] = Field(default_factory=dict, description="texts.* settings of this bank over the base's")
    file: str | None = Field(None, description="import: the published file (DCLIP/CuPL/CLIP_benchmark JSON)")
    format: Literal["dclip", "cupl", "clip-benchmark"] | None = None
    key: str | None = Field(None, description="import, clip-benchmark: the file's dataset entry")
    methods: tuple[str, ...] | None = Field(None, description="import: methods that score on it (default: all)")
    name: str | None = Field(None, description="the bank's label in tables (default: derived from its settings)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """'offline' | 'llm' | {offline: {texts keys}} | {llm: {llm keys}} | {import: FILE, format: F, key: K}."""
        if isinstance(data, str):
            if data not in GENERATED:
                raise ValueError(
                    f"bank {data!r}: write offline, llm, {{llm: {{model: M}}}} or {{import: FILE, format: dclip}}"
                )
            return {"source": data}
        if not isinstance(data, dict) or "source" in data:
            return data
        data = dict(data)
        if "import" in data:
            return {"source": "import", "file": data.pop("import"), **data}
        if "offline" in data:
            return {"source": "offline", "texts": data.pop("offline") or {}, **data}
        if "llm" in data:
            llm = data.pop("llm") or {}
            if not isinstance(llm, dict):
                raise ValueError("llm: give its settings as a mapping, e.g. {llm: {model: M, base_url: URL}}")
            return {"source": "llm", "texts": {"llm": llm}, **data}
        raise ValueError(f"bank {data!r}: write offline, {{llm: {{...}}}} or {{import: FILE, format: dclip}}")

    @model_validator(mode="after")
    def _consistent(self) -> BankEntry:
        if self.source == "import" and not (self.file and self.format):
            raise ValueError(
                f"import bank needs a file and its format: {{import: FILE, format: {'|'.join(IMPORT_FORMATS)}}}"
            )
        if self.source != "import" and (self.file or self.format or self.key or self.methods):
            raise ValueError("file, format, key and methods belong to an imported bank ({import: FILE, format: F})")
        if self.methods:
            zeroshot.check_methods(self.methods)
        unknown = sorted(set(self.texts) - set(TextsConfig.model_fields))
        if unknown:
            raise ValueError(f"{unknown} are not texts settings: use keys of the texts section (types, n_att, ...)")
        if "llm" in self.texts:
            LLMConfig.model_validate(self.texts["llm"])
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.source == "import":
            return f"import:{Path(str(self.file)).name}"
        if self.source == "llm":
            return f"llm:{(self.texts.get('llm') or {}).get('model', LLMConfig().model)}"
        extra = ",".join(f"{k}={_short(v)}" for k, v in sorted(self.texts.items()))
        return "offline" + (f":{extra}" if extra else "")

    def settings(self) -> dict[str, Any]:
        """The texts section this bank sets (an imported bank: none, it is imported when the cell runs)."""
        if self.source == "import":
            return {}
        return {"texts": {**self.texts, "generator": self.source}}


def _short(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


class FewShotGrid(StrictSection):
    """The few-shot part: one few-shot run (shots x seeds x methods) per dataset, model, generated bank and adapter."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    methods: tuple[str, ...] | None = Field(None, description="few-shot methods (default: fewshot.methods of the base)")
    adapters: tuple[str | None, ...] = Field(
        (None,), description="model.adapter of each few-shot cell (None: the plain model); one cell each"
    )
    datasets: tuple[str, ...] | None = Field(
        None, description="names of the datasets with few-shot cells (default: every dataset; each needs its splits)"
    )

    @field_validator("methods")
    @classmethod
    def _registered(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            scorers.check_methods(v)
        return v


class SuiteSpec(StrictSection):
    """The `suite:` section of a suite file."""

    name: str = Field(description="the suite's name (in suite ids and `coderflow suites`)")
    datasets: tuple[dict[str, Any], ...] = Field(min_length=1, description="dataset.* settings (or benchmark: NAME)")
    models: tuple[dict[str, Any], ...] = Field(({},), min_length=1, description="model.* settings per model")
    banks: tuple[BankEntry, ...] = Field((BankEntry(source="offline"),), min_length=1)
    methods: tuple[str, ...] | None = Field(None, description="zero-shot methods (default: the base's `methods`)")
    fewshot: FewShotGrid | None = None
    classes: tuple[int, ...] | None = Field(
        None,
        description="class-count study: each dataset as nested, seeded subsets of this many classes "
        "(dataset.class_subset, drawn with dataset.seed), one dataset `<name>-c<K>` per K",
    )

    @field_validator("classes")
    @classmethod
    def _class_counts(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or min(v) < 2):
            raise ValueError("give class counts of at least 2, e.g. classes: [10, 50, 100]")
        return None if v is None else tuple(sorted(set(v)))

    @field_validator("name")
    @classmethod
    def _named(cls, v: str) -> str:
        if not any(c.isalnum() for c in v):
            raise ValueError("give the suite a name with letters or digits")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            zeroshot.check_methods(v)
        return v

    @field_validator("datasets", "models", mode="before")
    @classmethod
    def _mappings(cls, v: Any, info: Any) -> Any:
        what = info.field_name
        for i, entry in enumerate(v or ()):
            if not isinstance(entry, dict):
                raise ValueError(f"{what}[{i}]: give a mapping of {what[:-1]} settings, e.g. {{name: ..., ...}}")
            allowed = DATASET_KEYS if what == "datasets" else tuple(ModelConfig.model_fields)
            unknown = sorted(set(entry) - set(allowed))
            if unknown:
                raise ValueError(
                    f"{what}[{i}]: unknown key(s) {unknown}: use {what[:-1]}.* settings ({', '.join(allowed[:6])}, ...)"
                )
        return v

    @model_validator(mode="after")
    def _fewshot_bank(self) -> SuiteSpec:
        if self.fewshot and not any(b.source in GENERATED for b in self.banks):
            raise ValueError("fewshot needs an offline or llm bank in banks (an imported bank is zero-shot only)")
        labels = [b.label for b in self.banks]
        if len(set(labels)) < len(labels):
            raise ValueError(f"banks {labels} have the same label twice: give one of them a name (name: LABEL)")
        return self


class SuiteFile(BaseModel):
    """A validated suite file: the grid (`suite`) and the settings of every cell (the file's other sections)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: SuiteSpec
    settings: dict[str, Any] = Field(default_factory=dict, description="config sections applied to every cell")
    source: str | None = Field(None, description="the file it was read from")


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: a `pipeline` (zeroshot) or `few-shot` run with its complete configuration."""

    cell_id: str
    kind: Literal["zeroshot", "fewshot"]
    dataset: str
    model: str
    bank: str
    config: PipelineConfig
    imported: BankEntry | None = None  # an imported bank: imported when the cell runs, then scored via classify.banks
    axis: str | None = None

    def row(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "kind": self.kind, "dataset": self.dataset, "model": self.model,
                "bank": self.bank, "axis": self.axis}  # fmt: skip


def model_label(model: ModelConfig) -> str:
    """'ViT-B-32/openai', 'ViT-S-32-alt/random', 'ViT-B-32/openai/bf16', 'ViT-B-16/openai/adapter=ID': what tells
    the image features of two models entries apart (a suite refuses two entries with one label)."""
    label = f"{model.name}/{model.pretrained or 'random'}"
    label += f"/{model.precision}" if model.precision != "fp32" else ""
    return label + (f"/adapter={model.adapter}" if model.adapter else "")


def cell_id(kind: str, dataset: dict[str, Any], model: dict[str, Any], bank: BankEntry, grid: dict[str, Any]) -> str:
    """A content id of the cell's place in the grid (its dataset, model and bank entries, kind and methods): the same
    cell has the same id in every run of the suite."""
    bank_part = bank.model_dump(mode="json", exclude={"name"})
    parts = {"kind": kind, "dataset": dataset, "model": model, "bank": bank_part, **grid}
    return content_id("suite-cell", json.dumps(parts, sort_keys=True, default=str))


def _where(kind: str, i: int, entry: dict[str, Any]) -> str:
    name = entry.get("name") or entry.get("benchmark") or entry.get("source")
    return f"suite.{kind}[{i}]" + (f" ({name})" if name else "")


def expand(file: SuiteFile) -> list[Cell]:
    """Every cell of the suite, each with its validated PipelineConfig, in run order: the cells of one dataset and
    model together (they share its image embeddings), zero-shot first; errors name the entry."""
    spec, base = file.suite, file.settings
    cells: list[Cell] = []
    labels: dict[str, int] = {}  # model label -> the first models entry that gave it
    for di, ds, classes in _datasets(spec, base):
        ds_settings = {k: v for k, v in ds.items() if k != "preset"}
        for mi, md in enumerate(spec.models):
            where = f"{_where('datasets', di, ds)} x {_where('models', mi, md)}"
            top = {"preset": ds["preset"]} if ds.get("preset") else {}
            layer = {**top, "dataset": ds_settings, "model": md}
            for bank in spec.banks:
                zs = {"methods": list(spec.methods)} if spec.methods else {}
                cfg = _config(base, layer, bank.settings(), zs, where=f"{where} x bank {bank.label}")
                label = model_label(cfg.model)  # the entry's own: a few-shot adapter is the cell's axis
                if labels.setdefault(label, mi) != mi:
                    raise SuiteError(
                        f"suite.models[{labels[label]}] and suite.models[{mi}] are both model {label}: their image "
                        "features are the same and the suite's tables would mix their results; drop one, or make "
                        "them differ in name, pretrained, precision or adapter"
                    )
                grid = {"methods": list(cfg.methods)}
                imported = bank if bank.source == "import" else None
                cells.append(_cell("zeroshot", cfg, ds, md, bank, grid, label, imported=imported, axis=classes))
            fs = spec.fewshot
            if fs is None or (fs.datasets is not None and cells[-1].dataset not in fs.datasets):
                continue
            for bank in (b for b in spec.banks if b.source in GENERATED):
                for adapter in fs.adapters:
                    few = {"shots": list(fs.shots), "seeds": list(fs.seeds)}
                    few |= {"methods": list(fs.methods)} if fs.methods else {}
                    extra = {"fewshot": few, **({"model": {"adapter": adapter}} if adapter else {})}
                    cfg = _config(base, layer, bank.settings(), extra, where=f"{where} x few-shot bank {bank.label}")
                    grid = {"fewshot": {**few, "methods": list(cfg.fewshot.methods)}, "adapter": adapter}
                    axis = ",".join(a for a in (classes, f"adapter={adapter}" if adapter else None) if a) or None
                    cells.append(_cell("fewshot", cfg, ds, md, bank, grid, label, axis=axis))
    names = {c.dataset for c in cells}
    missing = [n for n in (spec.fewshot.datasets or ()) if n not in names] if spec.fewshot else []
    if missing:
        raise SuiteError(f"suite.fewshot.datasets: {missing} name no dataset of the suite: use {sorted(names)}")
    return cells


def _datasets(spec: SuiteSpec, base: dict[str, Any]) -> list[tuple[int, dict[str, Any], str | None]]:
    """(entry index, dataset entry, class axis) of every dataset of the grid: the entries as given, or with
    `classes` each entry once per class count, as `dataset.class_subset` under the name `<name>-c<K>`."""
    if not spec.classes:
        return [(i, ds, None) for i, ds in enumerate(spec.datasets)]
    out = []
    for i, ds in enumerate(spec.datasets):
        layer = {**({"preset": ds["preset"]} if ds.get("preset") else {}), "dataset": ds}
        name = _config(base, layer, where=_where("datasets", i, ds)).dataset.name
        for k in spec.classes:
            entry = {**ds, "name": f"{name}-c{k}", "class_subset": k}
            out.append((i, entry, f"classes={k}"))
    return out


def _config(*layers: dict[str, Any], where: str) -> PipelineConfig:
    """The cell's configuration; an error is raised outside the handler (the CLI would describe its cause anew)."""
    try:
        return PipelineConfig(**merge_settings(*layers))
    except ValidationError as exc:
        message = describe_validation_error(exc, where)
    except ValueError as exc:
        message = f"invalid configuration in {where}: {' '.join(str(exc).split())}"
    raise SuiteError(message)


def _settings(settings: dict[str, Any], where: str) -> None:
    try:
        PipelineConfig(**settings)
        return
    except ValidationError as exc:
        message = describe_validation_error(exc, f"{where} (its settings outside `suite:`)")
    raise SuiteError(message)


def _entries(message: str) -> str:
    """'suite.banks.1: ...' and 'suite.datasets: datasets[1]: ...' as 'suite.banks[1]: ...'."""
    message = re.sub(r"suite\.(banks|datasets|models)\.(\d+)", r"suite.\1[\2]", message)
    return re.sub(r"suite\.(datasets|models): \1\[", r"suite.\1[", message)


def _cell(
    kind: Any, cfg: PipelineConfig, ds: dict, md: dict, bank: BankEntry, grid: dict, label: str, **more: Any
) -> Cell:
    cid = cell_id(kind, ds, md, bank, grid)
    return Cell(cid, kind, cfg.dataset.name, label, bank.label, cfg, **more)


def read_suite(path: str | Path, flags: dict[str, Any] | None = None) -> SuiteFile:
    """Read and validate a suite file: its `suite:` section, and its other sections (with `flags` over them) as the
    settings of every cell; an imported bank's file is resolved against the file's folder. Errors are one line."""
    data = load_yaml(path)
    if not isinstance(data.get(SUITE_KEY), dict):
        raise SuiteError(
            f"suite file {str(path)!r} has no `suite:` section: add suite: {{name: N, datasets: [...], models: [...], "
            "banks: [offline], methods: [clip, coder]}"
        )
    spec = dict(data.pop(SUITE_KEY))
    base = merge_settings(data, flags or {})
    here = Path(path).resolve().parent
    banks = spec.get("banks")
    if isinstance(banks, list):  # an imported file is read relative to the suite file
        spec["banks"] = [_resolve_import(b, here) for b in banks]
    return validate_suite({"suite": spec, "settings": base, "source": str(Path(path).resolve())}, str(path))


def _resolve_import(bank: Any, here: Path) -> Any:
    if isinstance(bank, dict) and isinstance(bank.get("import"), str):
        file = Path(bank["import"]).expanduser()
        return {**bank, "import": str(file if file.is_absolute() else here / file)}
    return bank


def validate_suite(data: dict[str, Any], where: str = "the suite") -> SuiteFile:
    """A SuiteFile from its JSON form, every cell's configuration built once (so every error shows before work)."""
    try:
        file = SuiteFile.model_validate(data)
    except ValidationError as exc:
        file, message = None, _entries(describe_validation_error(exc, where))
    if file is None:
        raise SuiteError(message)
    _settings(file.settings, where)
    for i, bank in enumerate(file.suite.banks):
        if bank.file and not Path(bank.file).is_file():
            raise SuiteError(f"suite.banks[{i}]: file {bank.file!r} not found: give a path relative to the suite file")
    expand(file)
    return file
