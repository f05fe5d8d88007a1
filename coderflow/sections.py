"""The sections of the pipeline configuration (dataset, model, texts, CODER, classify, few-shot, adapter) and their
checks; method names are checked against the method registries, which import no configuration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coderflow.presets.benchmarks import DEFAULT_BENCHMARK_BASE, benchmark_dataset, benchmark_name
from coderflow.storage.layout import safe_name
from coderflow.tasks.classify import zeroshot

DEFAULT_MODEL = "ViT-S-32-alt"
MAX_IMAGE_BYTES = 256 * 2**20  # model.max_image_bytes
MAX_IMAGE_PIXELS = 89_478_485  # model.max_image_pixels: PIL's own decompression-bomb limit (about 89 megapixels)
TEXT_TYPES = ("name", "template", "att", "ana", "syno", "ovo")
# CODER's one-vs-one paraphrases (CVPR24-CODER CODER/template.py:153-162): {a} differs from {b} by {x}
CODER_OVO_TEMPLATES: tuple[str, ...] = (
    "Because of {x}, {a} is different from {b}.",
    "{a} is characterized by a distinct {x}, while {b} isn't.",
    "The distinctive way in which {a} handles {x} separates it significantly from {b}.",
    "{a} stands out in {x} compared to {b}.",
    "The way {a} approaches {x} distinguishes it from {b}.",
    "In {x} expression, {a} deviates from {b}.",
    "Differences in {x} usage separate {a} from {b}.",
)


def parse_mapping(text: str, names: Sequence[str] = (), what: str = "value") -> dict[str, str]:
    """'a=1,b=2' or JSON as a mapping; bare values 'x,y,z' name `names` in order (split shares: train,val,test)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} {text!r} is not valid JSON ({exc.msg})") from None
        return {str(k): v for k, v in data.items()}
    items = [x.strip() for x in text.split(",") if x.strip()]
    if items and all("=" in x for x in items):
        return {k.strip(): v.strip() for k, v in (x.split("=", 1) for x in items)}
    if names and len(items) == len(names):
        return dict(zip(names, items, strict=True))
    shares = {2: "0.6,0.4", 3: "0.5,0.2,0.3"}.get(len(names), ",".join(["1"] * len(names)))
    example = f"{','.join(names)} as e.g. {shares} or " if names else ""
    raise ValueError(f"{what} {text!r}: give {example}key=value pairs separated by commas (a=1,b=2)")


class StrictSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_dataset_name(source: str | None) -> str:
    """A dataset name from its source: the last folder of the path or URL before any `{split}` part ('demo')."""
    if not source:
        return "demo"
    parts = [p for p in source.split("://", 1)[-1].replace("\\", "/").split("/") if p and "{split}" not in p]
    try:
        return safe_name(parts[-1] if parts else "")
    except ValueError:
        raise ValueError(f"cannot name a dataset after source {source!r}: pass dataset.name (--dataset NAME)") from None


SPLIT_NAMES = ("train", "val", "test")
# Actions of one invocation, not properties of the data: left out of every fingerprint.
DATASET_ACTIONS = frozenset({"reingest", "replace"})
# Which benchmark, from which base: the source, kind and name they set say it already (left out of every fingerprint).
DATASET_BENCHMARK = frozenset({"benchmark", "benchmark_base"})


def with_inferred_kind(ds: dict[str, Any]) -> dict[str, Any]:
    """Dataset settings with the kind inferred from the source when not given: a folder without classnames.txt is
    `folder`, any other source a CLIP_benchmark root (`wds`), a CoOp folder or split file `coop`."""
    if not ds.get("source") or "kind" in ds:
        return ds
    src = Path(str(ds["source"]).replace("{split}", str(ds.get("split") or "test"))).expanduser()
    kind = "folder" if src.is_dir() and not (src / "classnames.txt").exists() else "wds"
    return {**ds, "kind": "coop" if ds.get("coop_dir") or ds.get("coop_split_file") else kind}


class DatasetConfig(StrictSection):
    """Where a dataset comes from and how it is sharded."""

    name: str = Field("demo", description="name in paths and tables; default: the source folder's name, else 'demo'")
    source: str | None = Field(None, description="image folder, CLIP_benchmark root (path or URL); None for the demo")
    kind: Literal["demo", "folder", "wds", "coop"] = Field(
        "demo",
        description="folder: one sub-folder per class; wds: a CLIP_benchmark root; coop: CoOp's data root (splits "
        "from the dataset's split file); inferred from the source",
    )
    coop_dir: str | None = Field(None, description="kind coop: the dataset's folder under the root (oxford_pets)")
    coop_split_file: str | None = Field(
        None, description="kind coop: split file in that folder (split_zhou_OxfordPets.json; a preset sets both)"
    )
    coop_image_dir: str = Field("images", description="kind coop: the folder the split file's image paths are under")
    split: str = Field("test", description="the split to read ({split} in the source, or <root>/<split>/)")
    classnames_file: str | None = Field(None, description="class names, one a line (default: the folder names)")
    templates_file: str | None = Field(None, description="prompt templates with {c}, one a line")
    benchmark: str | None = Field(
        None,
        description="a CLIP_benchmark dataset by name (cifar10, vtab/pets; `coderflow datasets` lists them), read from "
        "its root under benchmark_base (wds_vtab-pets): sets the kind (wds), the source, the name and its preset",
    )
    benchmark_base: str = Field(
        DEFAULT_BENCHMARK_BASE,
        description="where --benchmark datasets are read: the Hugging Face hub organisation, or a mirror of it (a "
        "folder or fsspec URL holding the wds_* roots)",
    )
    class_subset: int | None = Field(
        None,
        ge=1,
        description="keep this many classes of the source (a seeded draw by `seed`, nested: the classes of a smaller "
        "subset are among those of a larger one), labels renumbered in the source's class order",
    )
    samples_per_shard: int = Field(100, ge=1, description="images per WebDataset shard written by ingest")
    demo_images_per_class: int = Field(20, ge=1, description="demo dataset: images drawn per class")
    demo_image_size: int = Field(64, ge=16, description="demo dataset: image side in pixels")
    seed: int = Field(0, description="demo images and split_ratio draws")
    split_ratio: dict[str, float] | None = Field(
        None,
        description="split one image folder: split name -> share (e.g. train 0.5, val 0.2, test 0.3), stratified "
        "per class and seeded by `seed`",
    )
    reingest: bool = Field(False, description="ingest again even when the source and config are unchanged")
    replace: bool = Field(
        False, description="allow ingesting another source or kind under an existing dataset name (replaces it)"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = benchmark_dataset(data)  # --benchmark NAME: kind, source and name, unless given
        if isinstance(data, dict) and not data.get("name"):
            coop = data.get("kind") == "coop" and data.get("coop_dir")  # one CoOp root holds many datasets
            data = {**data, "name": default_dataset_name(data["coop_dir"] if coop else data.get("source"))}
        return data

    @field_validator("benchmark")
    @classmethod
    def _known_benchmark(cls, v: str | None) -> str | None:
        return None if v is None else benchmark_name(v)  # an unknown name: refused, listing the known ones

    @field_validator("split_ratio", mode="before")
    @classmethod
    def _shares_text(cls, v: Any) -> Any:
        return parse_mapping(v, SPLIT_NAMES, "dataset.split_ratio") if isinstance(v, str) else v

    @field_validator("split_ratio")
    @classmethod
    def _shares(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (len(v) < 2 or min(v.values()) <= 0):
            raise ValueError("give a positive share for at least two splits, e.g. {train: 0.5, val: 0.2, test: 0.3}")
        if v is not None and abs(sum(v.values()) - 1) > 1e-6:
            shares = ",".join(f"{k}={x:g}" for k, x in v.items())
            raise ValueError(
                f"the shares {shares} sum to {sum(v.values()):g}, not 1: give shares that sum to 1, e.g. 0.5,0.2,0.3"
            )
        return v

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the ingested data (actions such as `reingest` left out)."""
        coop = set() if self.kind == "coop" else {"coop_dir", "coop_split_file", "coop_image_dir"}
        return self.model_dump(mode="json", exclude=set(DATASET_ACTIONS) | coop | DATASET_BENCHMARK)

    @field_validator("name", "split")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    def model_post_init(self, _ctx: object) -> None:
        if self.kind != "demo" and not self.source:
            raise ValueError(f"dataset.kind={self.kind!r} needs dataset.source (a folder path or URL)")
        if self.kind == "coop" and not (self.coop_dir and self.coop_split_file):
            raise ValueError(
                "dataset.kind='coop' needs the dataset's folder and split file: pass --preset (pets, dtd, ...) or "
                "--dataset.coop-dir and --dataset.coop-split-file"
            )
        if self.split_ratio and self.kind != "folder":
            what = {"wds": "a CLIP_benchmark root has its own splits", "coop": "its split file names the splits"}.get(
                self.kind, "the demo has one split"
            )
            raise ValueError(
                f"--split-ratio splits an image folder, but dataset {self.name!r} is kind {self.kind!r} ({what}): "
                "drop --split-ratio and pick the split with --split"
            )


class ModelConfig(StrictSection):
    """An open_clip model: architecture name plus a pretrained tag, hub id or checkpoint file (None = random)."""

    name: str = Field(DEFAULT_MODEL, description="open_clip architecture (open_clip.list_models())")
    pretrained: str | None = Field(
        None, description="open_clip pretrained tag (openai), hub id or checkpoint file; None: random weights"
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:N or mps")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 weights; bf16/fp16 encode under torch.autocast (a model id of its own: __bf16)"
    )
    decode_workers: int | None = Field(
        None, ge=0, description="processes that decode and preprocess images; None: one per core, 0: two threads"
    )
    max_image_bytes: int = Field(
        MAX_IMAGE_BYTES,
        ge=1,
        description="a larger image file is an error row, never decoded (its pixels would take many times its size)",
    )
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS,
        ge=1,
        description="an image with more pixels (width x height, read from its header) is an error row, never decoded",
    )
    adapter: str | None = Field(
        None, description="IMO adapter: an id from `coderflow adapter train` (in the work directory) or a file"
    )


class LLMConfig(StrictSection):
    """An OpenAI-compatible endpoint. The API key comes only from $OPENAI_API_KEY and is never stored."""

    model: str = Field("gpt-4o-mini", description="model name the endpoint serves")
    base_url: str | None = Field(None, description="endpoint URL; default $OPENAI_BASE_URL, else api.openai.com")
    max_concurrency: int | None = Field(
        None, ge=1, description="requests in flight; None: the server's slots (llama.cpp /props), else 4"
    )
    timeout: float = Field(120.0, gt=0, description="seconds per request (a small local model on 2 cores is slow)")
    max_retries: int = Field(4, ge=0, description="retries of a failed request (timeouts, 429, 5xx)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: the most likely reply)")
    max_tokens: int = Field(160, ge=16, description="reply length cap: a short phrase list needs about 160 tokens")
    price_per_1k: float | None = Field(None, ge=0, description="price per 1,000 tokens: the summary shows the cost")

    @field_validator("base_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v and "@" in v.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError(
                "must not hold credentials (user:password@): settings are stored with every run; give the key in "
                "$OPENAI_API_KEY"
            )
        return v


class TextsConfig(StrictSection):
    """How the text bank is generated: which generator, which text types, how many of each."""

    generator: Literal["offline", "llm"] = Field(
        "offline", description="offline: WordNet and templates, no network; llm: an OpenAI-compatible endpoint"
    )
    types: tuple[Literal["name", "template", "att", "ana", "syno", "ovo"], ...] = Field(
        TEXT_TYPES, description="text types in the bank (name and template always)"
    )
    name_template: str = Field(
        "a photo of {c}",
        description="CODER's one class-name prompt per class (text_type 'name'; synonyms use it too); the ensemble "
        "of templates (text_type 'template') is what `clip` and the few-shot zero-shot term use",
    )
    att_template: str = Field("{c} which has {x}", description="attribute texts: {c} class, {x} attribute")
    ana_template: str = Field("a {c} similar to {x}.", description="look-alike texts: {c} class, {x} look-alike")
    ovo_templates: tuple[str, ...] = Field(
        CODER_OVO_TEMPLATES, description="one-vs-one paraphrases: {a} class, {b} the other class, {x} difference"
    )
    grammar: Literal["generated", "all", "off"] = Field(
        "generated",
        description="articles and plurals that agree with the class name ('dots similar to', 'many circles'): in "
        "coderflow's generated texts (att, ana, syno, ovo), also in the template ensemble (all; CLIP's templates are "
        "then no longer verbatim), or nowhere",
    )
    n_att: int = Field(5, ge=1, description="attribute texts per class")
    n_ana: int = Field(5, ge=1, description="look-alike texts per class")
    n_syno: int = Field(3, ge=1, description="synonym texts per class")
    n_ovo: int = Field(3, ge=1, description="one-vs-one texts per class pair")
    ana_max_cosine: float = Field(0.9, description="drop look-alikes this close to a class-name prompt")
    dclip_after_text: str = Field(
        "",
        description="imported DCLIP descriptors: text after each '{c}, which ... {d}' sentence (DCLIP load.py "
        "after_text: '.' for ImageNet, set by the imagenet preset; '' otherwise)",
    )
    classnames: tuple[str, ...] | None = Field(
        None,
        description="the class names written into the texts, one per class in the dataset's class order (default: "
        "the dataset's own; CODER's few-shot EuroSAT names come from the eurosat preset's fewshot.texts)",
    )
    ana_retries: int = Field(2, ge=0, description="look-alike rounds to replace the ones dropped as too close")
    ovo_pairs: Literal["consulted", "nearest", "confused"] = Field(
        "consulted",
        description="consulted: the candidate pairs CODER* will re-rank (top rerank_k classes of images under the "
        "threshold, no labels; 'nearest' until images are embedded); nearest: closest class prompts; confused: "
        "pairs zero-shot CLIP confuses",
    )
    ovo_budget: int = Field(20, ge=0, description="at most this many class pairs get one-vs-one texts")
    llm: LLMConfig = LLMConfig()

    @field_validator("name_template", "att_template", "ana_template", "ovo_templates")
    @classmethod
    def _placeholders(cls, v: str | tuple[str, ...], info: Any) -> str | tuple[str, ...]:
        needed = {"name_template": "{c}", "att_template": "{c} {x}", "ana_template": "{c} {x}"}.get(
            info.field_name, "{a} {b} {x}"
        )
        for template in (v,) if isinstance(v, str) else v:
            missing = [p for p in needed.split() if p not in template]
            if missing:
                raise ValueError(f"template {template!r} lacks {' and '.join(missing)}: write e.g. {needed}")
        if not v:
            raise ValueError("give at least one template")
        return v

    @field_validator("types")
    @classmethod
    def _names_always(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("name", "template", *v)))


class CoderConfig(StrictSection):
    """How CODER vectors are materialised: dense cosines to every text, or only each image's top-k texts."""

    format: Literal["dense", "sparse"] = Field(
        "dense", description="dense: 4 bytes x texts per image; sparse: top_k (index, value) pairs per image"
    )
    top_k: int = Field(256, ge=1, description="texts kept per image in the sparse format")
    batch_size: int = Field(2048, ge=1, description="images per matrix product")


class ClassifyConfig(StrictSection):
    """Parameters of the zero-shot methods."""

    rerank_threshold: float = Field(
        0.1,
        ge=0,
        description="CODER*: re-rank when top1 - top2 probability is below (CODER: per dataset, ImageNet 0.1)",
    )
    rerank_k: int = Field(5, ge=2, description="CODER*: candidates re-ranked by one-vs-one texts")
    rerank_thresholds: tuple[float, ...] = Field(
        (), description="CODER*: thresholds the suite report re-scores CODER* at, from the stored embeddings"
    )
    waffle_pairs: int = Field(15, ge=1, description="WaffleCLIP: (random words, random characters) prompt pairs")
    waffle_seed: int = Field(0, description="WaffleCLIP: seed of the random words and characters")
    cupl_mode: Literal["sentences", "both"] = Field(
        "sentences",
        description="CuPL: the mean of the class's imported CuPL sentences, or of them and the template prompts "
        "(both); CuPL classify_imagenet.py use_both",
    )
    banks: dict[str, str] | None = Field(
        None,
        description="method -> text bank id for methods that score on another bank than the run's (e.g. dclip on an "
        "imported DCLIP bank: `coderflow texts import`); recorded in the run's config",
    )
    waffle_reps: int = Field(
        1,
        ge=1,
        description="WaffleCLIP repetitions, each with its own descriptors (seed waffle_seed + r): metrics per rep "
        "(`seed`) and top1_mean/top1_std over them (WaffleCLIP base_main.py --reps)",
    )

    @field_validator("banks", mode="before")
    @classmethod
    def _banks_text(cls, v: Any) -> Any:
        return parse_mapping(v, (), "classify.banks (METHOD=BANK_ID)") if isinstance(v, str) else v

    @field_validator("banks")
    @classmethod
    def _known_methods(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        allowed = [m for m in zeroshot.SCORERS if m not in zeroshot.OWN_BANKS]
        unknown = sorted(set(v or {}) - set(allowed))
        if unknown:
            raise ValueError(f"banks for methods {unknown}: give banks for {allowed}")
        return v


def default_methods() -> tuple[str, ...]:
    """Every registered zero-shot method (tasks/classify/zeroshot.py:SCORERS), in its order."""
    return tuple(zeroshot.SCORERS)
