"""What each flow returns: typed stage results (the CLI prints them, Python callers read their fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageResult:
    """Common to every stage result: a flat row for printing."""

    def row(self) -> dict[str, Any]:
        """The scalar fields (lists and mappings left out)."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, dict | list | tuple)}


@dataclass(frozen=True)
class IngestResult(StageResult):
    """A split written as shards (or found unchanged: `skipped`)."""

    samples: int
    shards: list[str]
    skipped: bool
    split_id: str
    problems: dict[str, int] = field(default_factory=dict)
    invalidated: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class EmbedResult(StageResult):
    """Image embeddings of a split: shards embedded now or before (`shards_skipped`), rows and failed rows."""

    shards: int
    shards_skipped: int
    rows: int
    errors: int


@dataclass(frozen=True)
class TextBankResult(StageResult):
    """A text bank (generated or imported) and how many of its texts this model embedded now."""

    textbank_id: str
    n_texts: int
    embedded: int
    n_classes: int | None = None
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    reused: bool = False  # the bank's inputs were unchanged: nothing was generated


@dataclass(frozen=True)
class CoderResult(StageResult):
    """CODER vectors materialised per image shard."""

    shards: int
    shards_skipped: int
    rows: int


@dataclass(frozen=True)
class ClassifyResult(StageResult):
    """A zero-shot run: its id, top-1 per method and the per-method details (re-ranking counts, ...)."""

    run_id: str
    top1: dict[str, float]
    n_samples: int
    n_errors: int
    n_classes: int
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    flow_run_id: str | None = None


@dataclass(frozen=True)
class PipelineResult(StageResult):
    """An end-to-end run: the classify run plus every stage's result and its seconds (`stages`)."""

    run_id: str
    top1: dict[str, float]
    images: EmbedResult
    texts: TextBankResult
    coder: CoderResult
    classify: ClassifyResult
    stages: dict[str, float]
    flow_run_id: str | None = None


@dataclass(frozen=True)
class FewShotResult(StageResult):
    """A few-shot run: mean/std test top-1 per (method, shots) over seeds, and the accuracy-vs-shots plot."""

    run_id: str
    plot: str
    cells: int
    table: list[dict[str, Any]]
    flow_run_id: str | None = None


@dataclass(frozen=True)
class AdapterResult(StageResult):
    """A trained IMO adapter: its id (for --model.adapter), where it is, and how training went."""

    adapter_id: str
    path: str
    base_model_id: str
    steps: int
    first_loss: float | None
    last_loss: float | None
    epoch_losses: list[float]
    seconds: float
    images_per_second: float | None
    skipped_samples: int


@dataclass(frozen=True)
class OverlapResult(StageResult):
    """Intra-modal overlap of the original and the adapted image features (one row per model and metric)."""

    run_id: str
    models: dict[str, str]
    metrics: list[dict[str, Any]]
