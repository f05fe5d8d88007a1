"""What flows and tasks return: typed stage results (the CLI prints them) and the task results flows read."""

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
    shift: list[dict[str, Any]] = field(default_factory=list)  # fewshot.test_datasets: tasks/report/shift.py rows


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


# Task results: what a Prefect task hands to the flow that called it. Frozen dataclasses pickle (Dask and Ray task
# runners send them between processes); where one is stored as JSON (a run record) it goes through `asdict`.


@dataclass(frozen=True)
class ShardResult:
    """One shard's derived file (image embeddings, CODER vectors): its rows, failed rows, and whether it was there."""

    path: str
    rows: int
    skipped: bool
    errors: int = 0


@dataclass(frozen=True)
class ModelDescription:
    """A loaded model's id, preprocess config and text context, for run records."""

    model_id: str
    preprocess: dict[str, Any]
    context_length: int


@dataclass(frozen=True)
class EmbeddedTexts:
    """A text bank's texts embedded with a text model: embedded now (`new`), found stored, and truncated."""

    model_id: str
    new: int
    reused: int
    truncated: int


@dataclass(frozen=True)
class StoredBank:
    """A text bank written (generated or imported) or found unchanged (`reused`), with what its build reported."""

    textbank_id: str
    n_texts: int
    path: str
    n_classes: int | None = None
    usage: dict[str, Any] | None = None
    reused: bool = False
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Predictions:
    """The predictions of a zero-shot run: where, on which images (`split_id`), and per-method counters."""

    path: str
    split_id: str | None
    n_samples: int
    n_errors: int
    n_classes: int
    methods: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """A run's metrics file and top-1 per zero-shot method."""

    path: str
    top1: dict[str, float]


@dataclass(frozen=True)
class RunReport:
    """What was published for a run: the metrics artifact's key, its methods, how many confused pairs were listed."""

    metrics_key: str
    methods: list[str]
    confused_pairs: int


@dataclass(frozen=True)
class SupportPlan:
    """Support keys per few-shot cell ('<shots>-<seed>'), every key of them (`pool`), per cell the classes with
    fewer train samples than shots (`short`), and each pooled key's image path as its source names it (`paths`)."""

    sets: dict[str, list[str]]
    pool: list[str]
    short: dict[str, dict[int, int]]
    paths: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ShiftTarget:
    """A shifted test set of a few-shot run (fewshot.test_datasets): its dataset and split, and for each of its
    classes, in its own order, the index of the source class of the same name (`columns`)."""

    dataset: str
    split: str
    columns: list[int]


@dataclass(frozen=True)
class CellPredictions:
    """One few-shot cell's prediction and support parts, its chosen hyper-parameters as metric rows, support size."""

    part: str
    support_part: str
    params: list[dict[str, Any]]
    support: int
    n_classes: int
