"""The few-shot and adapter sections of the configuration (coderflow.config re-exports them with the rest)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from coderflow.presets.benchmarks import DEFAULT_BENCHMARK_BASE, find_benchmark, unknown_benchmark
from coderflow.sections import DatasetConfig, StrictSection, TextsConfig, parse_mapping, with_inferred_kind
from coderflow.storage.layout import safe_name
from coderflow.tasks.fewshot import scorers


def default_fewshot_methods() -> tuple[str, ...]:
    """Every registered few-shot method (tasks/fewshot/scorers.py:SCORERS), in its order."""
    return tuple(scorers.SCORERS)


class FewShotConfig(StrictSection):
    """Training-free few-shot runs: K-shot support sets from `train`, hyper-parameters on `val`, figures on `test`.

    Defaults follow the references: Tip-Adapter's grid scaled by `tip_search_scale` (its per-dataset configs),
    CODER-Adapter's three-round search from its initial (alpha, beta), IMO's grids for Tip-X. A preset sets the
    per-dataset values (`--preset`).
    """

    shots: tuple[int, ...] = Field((1, 2, 4, 8, 16), description="support images per class (K), one run each")
    seeds: tuple[int, ...] = Field((1, 2, 3), description="seeds of the support-set draws, one run each")
    sampling: Literal["reference", "per_class"] = Field(
        "reference",
        description="support-set draw: reference (random.seed(seed), then random.sample per class in the train "
        "order, as CoOp/Tip-Adapter/CODER); per_class (a numpy generator per (seed, class))",
    )
    train_split: str = Field("train", description="split the support sets are drawn from")
    val_split: str = Field(
        "val",
        description="split the hyper-parameters are searched on; the test split itself searches on test, as "
        "Tip-Adapter's ImageNet script does (main_imagenet.py: ImageNet has no val split)",
    )
    test_split: str = Field("test", description="split the reported accuracies are measured on")
    augment_views: int = Field(
        10, ge=0, description="random crop+flip views averaged per support image; 0: the stored train embeddings"
    )
    augment_seed: int = Field(0, description="seed of the augmented views")
    methods: tuple[str, ...] = Field(
        default_factory=lambda: default_fewshot_methods(), description="few-shot methods (tasks/fewshot/scorers.py)"
    )
    search: Literal["grid", "fixed"] = Field("grid", description="hyper-parameters: searched on val, or fixed values")
    alpha: float = Field(1.0, description="cache weight in fixed mode")
    beta: float = Field(5.5, description="cache sharpness in fixed mode")
    gamma: float = Field(1.0, description="Tip-X KL weight in fixed mode")
    alphas: tuple[float, ...] | None = Field(None, description="grid of alphas for every method (default: each one's)")
    betas: tuple[float, ...] | None = Field(None, description="grid of betas for every method (default: each one's)")
    gammas: tuple[float, ...] | None = Field(None, description="Tip-X grid of gammas (default: IMO's 0..30, 50)")
    tip_search_scale: tuple[float, float] = Field(
        (7.0, 3.0), description="Tip-Adapter (beta, alpha) search maxima (its ImageNet config; presets per dataset)"
    )
    tip_search_steps: tuple[int, int] = Field((200, 20), description="Tip-Adapter (beta, alpha) grid sizes")
    refine_steps: int = Field(0, ge=0, description="Tip-Adapter: a finer grid around the best coarse point")
    coder_init: tuple[float, float] = Field(
        (1.0, 1.0), description="CODER-Adapter initial (alpha, beta), compared with the searched pair on val"
    )
    coder_search_steps: tuple[int, int] = Field((500, 50), description="CODER-Adapter (beta, alpha) grid sizes")
    coder_search_rounds: int = Field(3, ge=1, description="CODER-Adapter: 1 grid + refinements on [0.5, 1.5] x best")
    kl_temperature: float = Field(0.5, gt=0, description="Tip-X: softmax temperature of the class distributions")
    test_datasets: tuple[str, ...] = Field(
        (),
        description="distribution shift: also test on these datasets with the support set and the hyper-parameters "
        "chosen on val: benchmark names (imagenetv2, imagenet-a; `coderflow datasets`) or NAME=SOURCE (a folder or "
        "CLIP_benchmark root); classes are matched by name, scores restricted to each one's classes",
    )
    texts: dict[str, Any] = Field(
        default_factory=dict,
        description="`texts` settings of the few-shot bank only, over the run's (CODER's few-shot wordings: Pets and "
        "DTD att/ana templates, EuroSAT class names; the presets set them)",
    )

    @field_validator("methods")
    @classmethod
    def _registered(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        scorers.check_methods(v)
        return tuple(dict.fromkeys(v))

    @field_validator("test_datasets")
    @classmethod
    def _test_datasets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        names = [test_dataset(entry).name for entry in v]  # each entry is valid on its own
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"test datasets named twice: {twice}: give each NAME=SOURCE a name of its own")
        return tuple(dict.fromkeys(v))

    @field_validator("shots", "seeds")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 0:
            raise ValueError("give at least one non-negative value")
        return tuple(dict.fromkeys(v))

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if 0 in v:
            raise ValueError("0 support images per class is not few-shot: give K >= 1, e.g. --shots 1,2,4,8,16")
        return v

    @field_validator("texts", mode="before")
    @classmethod
    def _texts_settings(cls, v: Any) -> Any:
        v = parse_mapping(v, (), "fewshot.texts (KEY=VALUE)") if isinstance(v, str) else v
        if unknown := sorted(set(v or {}) - set(TextsConfig.model_fields)):
            raise ValueError(f"fewshot.texts: {unknown} are not texts settings: use keys of the texts section")
        valid = TextsConfig.model_validate(v or {})  # the values themselves are valid texts settings
        return {k: getattr(valid, k) for k in v or {}}

    @model_validator(mode="after")
    def _support_not_scored(self) -> FewShotConfig:
        if self.train_split in (self.val_split, self.test_split):
            raise ValueError(
                f"fewshot.train_split {self.train_split!r} is also the val or test split: the support images would "
                "be searched or scored on; name another split (e.g. --fewshot.val-split val)"
            )
        return self

    @property
    def searches_on_test(self) -> bool:
        """The reference's ImageNet protocol: hyper-parameters searched on the test split (val_split = test_split)."""
        return self.val_split == self.test_split

    def bank_texts(self, texts: TextsConfig) -> TextsConfig:
        """The texts settings of the few-shot bank: the run's, with `fewshot.texts` laid over them."""
        return TextsConfig.model_validate({**texts.model_dump(), **self.texts}) if self.texts else texts

    def target_datasets(self, source: DatasetConfig) -> list[DatasetConfig]:
        """The shifted test sets (`test_datasets`) as dataset settings; benchmarks are read from the source's
        benchmark_base. A test set named as the source is refused."""
        targets = [test_dataset(entry, source.benchmark_base) for entry in self.test_datasets]
        if any(t.name == source.name for t in targets):
            raise ValueError(
                f"fewshot.test_datasets names the source dataset {source.name!r}: its test split is always scored; "
                "give other datasets, or NAME=SOURCE with another NAME"
            )
        return targets


class AdapterConfig(StrictSection):
    """IMO adapter training (Kravets & Namboodiri 2024): bottleneck adapters in the image encoder, cross-entropy."""

    train_split: str = Field("train", description="labeled split the adapters are trained on")
    epochs: int = Field(1, ge=1, description="passes over the training split")
    lr: float = Field(8e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    batch_size: int = Field(128, ge=1, description="images per training step")
    bottleneck: int = Field(64, ge=1, description="adapter hidden width (down-projection size)")
    scale: float = Field(0.03, description="s in x + MLP(LN(x)) + s * up(relu(down(x)))")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the adapters")
    head_input: Literal["raw", "normalized"] = Field(
        "raw",
        description="the training head reads the raw projected embedding (IMO adapter_utils.py:8-31) or its L2 norm",
    )
    train_normalize: bool = Field(
        False,
        description="train on CLIP-normalised images (mean/std) instead of IMO's unnormalised pixels in [0, 1] "
        "(supervised_train.py:83-89, Normalize commented out); part of the adapter id",
    )
    seed: int = Field(0, description="seed of initialisation and batch order")
    overlap_bins: int = Field(100, ge=2, description="histogram bins of the cosine distributions")
    overlap_max_pairs: int = Field(2_000_000, ge=1, description="image pairs sampled for the overlap at most")


def test_dataset(entry: str, benchmark_base: str = DEFAULT_BENCHMARK_BASE) -> DatasetConfig:
    """One `fewshot.test_datasets` entry as dataset settings (its `test` split): a benchmark name, or NAME=SOURCE."""
    name, eq, source = (part.strip() for part in entry.partition("="))
    if eq:
        if not (name and source):
            raise ValueError(
                f"test dataset {entry!r}: give NAME=SOURCE (a folder or CLIP_benchmark root), e.g. sketch=/data/sketch"
            )
        return DatasetConfig.model_validate(
            with_inferred_kind({"name": safe_name(name), "source": source, "split": "test"})
        )
    if find_benchmark(name) is None:
        raise ValueError(f"test dataset {entry!r}: {unknown_benchmark(name)}; or give NAME=SOURCE")
    return DatasetConfig(benchmark=name, benchmark_base=benchmark_base, split="test")
