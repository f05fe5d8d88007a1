"""Python API over stored runs: load a run's arrays and re-score a zero-shot method on a subset of its text bank."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coderflow.config import ClassifyConfig
from coderflow.storage.arrays import ImageSet, TextSet, load_images, load_texts
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table
from coderflow.storage.schemas import TEXT_TYPES
from coderflow.storage.shards import ingest_info
from coderflow.tasks.classify.methods import top_k
from coderflow.tasks.classify.zeroshot import OWN_BANKS, SCORERS, run_methods

# The CODER paper's ablation of text types (prompt, + attributes, + analogous classes, + synonyms), then CODER*
# with the one-vs-one texts: (row label, method, text types).
ABLATION: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("P", "coder", ("name",)),
    ("P+Att", "coder", ("name", "att")),
    ("P+Att+Ana", "coder", ("name", "att", "ana")),
    ("P+Att+Ana+Syno", "coder", ("name", "att", "ana", "syno")),
    ("P+Att+Ana+Syno+OvO (CODER*)", "coder_rerank", ("name", "att", "ana", "syno", "ovo")),
)


@dataclass(frozen=True)
class Scores:
    """One method's class scores over a run's images: predictions, top-5 and accuracy on the labelled ones."""

    method: str
    scores: np.ndarray  # (N, classes)
    pred: np.ndarray  # (N,)
    top5: np.ndarray  # (N, <=5)
    labels: np.ndarray  # (N,), -1 where unlabelled
    n_texts: int  # texts of the bank the method was given

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy over the labelled images (nan when none are labelled)."""
        known = self.labels >= 0
        return float((self.pred[known] == self.labels[known]).mean()) if known.any() else float("nan")


@dataclass
class Run:
    """A stored zero-shot run: its images (`images.x`, `images.labels`, `images.keys`), its text bank (`bank.t`, the
    embeddings in bank row order, and `texts`, the bank's rows) and the settings it ran with (`config`)."""

    run_id: str
    dataset: str
    split: str
    model_id: str
    textbank_id: str
    config: dict[str, Any]
    images: ImageSet
    bank: TextSet
    texts: pa.Table
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    waffles: list[TextSet] = field(default_factory=list)  # WaffleCLIP's banks, one per rep
    method_banks: dict[str, TextSet] = field(default_factory=dict)  # methods that read another bank (classify.banks)

    def __repr__(self) -> str:
        """One line for a notebook: what the run is, never its arrays."""
        n, d = self.images.x.shape
        return (
            f"Run({self.run_id!r}, dataset={self.dataset!r}, split={self.split!r}, model={self.model_id!r}, "
            f"textbank={self.textbank_id!r}: {n} images x {d} dims, {len(self.bank.text_ids)} texts, "
            f"{len(self.class_names)} classes, methods={list(self.config.get('methods') or [])})"
        )

    @property
    def class_names(self) -> list[str]:
        return self.bank.class_names

    def select(
        self,
        texts: Sequence[str] | Sequence[int] | np.ndarray | None = None,
        per_class: int | None = None,
    ) -> np.ndarray:
        """Bank row positions: `texts` as text types ('name', 'att', ...), row positions (text_index) or a boolean
        mask over the bank (None: every row); `per_class` keeps the first k rows of each (class, text type)."""
        n = len(self.bank.text_ids)
        if texts is None:
            keep = np.ones(n, bool)
        else:
            arr = np.asarray(texts)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise ValueError(f"texts mask has shape {arr.shape}: pass one boolean per bank row ({n})")
                keep = arr
            elif arr.dtype.kind in "US":
                unknown = sorted(set(arr.tolist()) - set(TEXT_TYPES))
                if unknown:
                    raise ValueError(f"texts {unknown}: text types are {', '.join(TEXT_TYPES)}")
                keep = np.isin(self.bank.text_type, arr)
            elif arr.dtype.kind in "iu":
                if arr.size and (arr.min() < 0 or arr.max() >= n):
                    raise ValueError(f"texts holds row positions outside [0, {n}): pass text_index values")
                keep = np.zeros(n, bool)
                keep[arr] = True
            else:
                raise ValueError("texts: pass text types, row positions (text_index) or a boolean mask")
        rows = np.flatnonzero(keep)
        if per_class is not None:
            if per_class < 1:
                raise ValueError(f"per_class={per_class}: keep at least one text per class and type")
            seen: dict[tuple[int, str], int] = {}
            kept = []
            for r in rows.tolist():
                key = (int(self.bank.class_index[r]), str(self.bank.text_type[r]))
                seen[key] = seen.get(key, 0) + 1
                if seen[key] <= per_class:
                    kept.append(r)
            rows = np.asarray(kept, dtype=np.int64)
        return rows

    def subset(self, rows: np.ndarray) -> TextSet:
        """The bank restricted to `rows` (the class list is kept)."""
        b = self.bank
        return TextSet(
            [b.text_ids[i] for i in rows], b.class_index[rows], b.text_type[rows], b.other_class_index[rows],
            b.class_names, b.t[rows], None if b.source is None else b.source[rows],
        )  # fmt: skip

    def score(
        self,
        method: str = "coder",
        texts: Sequence[str] | Sequence[int] | np.ndarray | None = None,
        per_class: int | None = None,
    ) -> Scores:
        """Re-score a zero-shot method on (a subset of) the run's bank, with the run's classify settings; nothing is
        written. E.g. `run.score("coder", texts=["name", "att"])` or `run.score("coder", per_class=3)`. Methods that
        read banks of their own (waffle: its first rep; a `classify.banks` entry) score on those, whole."""
        if method not in SCORERS:
            raise ValueError(f"method {method!r}: choose one of {', '.join(SCORERS)}")
        own = method in OWN_BANKS or method in self.method_banks
        if own and (texts is not None or per_class is not None):
            raise ValueError(f"method {method!r} reads a bank of its own: texts and per_class select the run's bank")
        if method in OWN_BANKS and not self.waffles:
            raise ValueError(f"run {self.run_id} stored no {method} banks: score it on a run that used {method}")
        rows = self.select(texts, per_class)
        if rows.size == 0:
            raise ValueError("the selection holds no texts: choose text types or rows the bank has")
        bank = self.subset(rows)
        result = run_methods([method], self.images.x, bank, self.classify, self.waffles, self.method_banks)[0]
        used = self.method_banks.get(method) or (self.waffles[0] if method in OWN_BANKS else bank)
        top5 = top_k(result.scores, min(5, bank.n_classes)) if result.top5 is None else result.top5
        pred = top5[:, 0] if result.pred is None else result.pred
        return Scores(method, result.scores, np.asarray(pred), np.asarray(top5), self.images.labels, len(used.text_ids))

    def ablate(self) -> list[dict[str, Any]]:
        """The paper's text-type ablation (ABLATION) plus CLIP's prompt ensemble: one row per step with its top-1
        accuracy and the difference from the previous step; steps whose texts the bank lacks are left out."""
        present = set(self.bank.text_type.tolist())
        rows: list[dict[str, Any]] = []
        if {"name", "template"} & present:
            clip = self.score("clip")
            rows.append({"step": "CLIP (prompt ensemble)", "method": "clip", "texts": "name,template",
                         "n_texts": clip.n_texts, "top1": clip.accuracy, "gain": None})  # fmt: skip
        previous = None
        for label, method, types in ABLATION:
            if types[-1] not in present or "name" not in present:
                continue
            s = self.score(method, texts=list(types))
            gain = None if previous is None else s.accuracy - previous
            rows.append({"step": label, "method": method, "texts": ",".join(types), "n_texts": s.n_texts,
                         "top1": s.accuracy, "gain": gain})  # fmt: skip
            previous = s.accuracy
        return rows


def load_run(run_id: str, workdir: str | None = None) -> Run:
    """A stored zero-shot run (flow `pipeline` or `classify`) with its arrays, read from the work directory."""
    layout = Layout.at(workdir)
    manifest_path = layout.run_file(run_id, "manifest.json")
    if not manifest_path.exists():
        raise FileNotFoundError(f"no run {run_id!r} in {layout.root}: list the runs with `coderflow runs`")
    manifest = json.loads(manifest_path.read_text())
    model_id, textbank_id = manifest.get("model_id"), manifest.get("textbank_id")
    if not model_id or not textbank_id:
        raise ValueError(
            f"run {run_id!r} ({manifest.get('flow')}) has no text bank: load a zero-shot run (`coderflow runs "
            "--flow pipeline`)"
        )
    config = manifest.get("config") or {}
    split = _run_split(layout, run_id, config)
    dataset = manifest["dataset"]
    _check_split_id(layout, run_id, manifest, dataset, split)
    classify = ClassifyConfig.model_validate(config.get("classify") or {})
    texts = read_table(layout.textbank_file(textbank_id))
    waffles = [load_texts(layout, w, model_id) for w in manifest.get("waffle_textbank_ids") or []]
    banks = {m: load_texts(layout, b, model_id) for m, b in (classify.banks or {}).items()}
    images = load_images(layout, model_id, dataset, split)
    if not manifest.get("split_id"):  # a run from before split ids were recorded: its predictions name its images
        _check_predicted_images(layout, run_id, dataset, split, images)
    return Run(
        run_id, dataset, split, model_id, textbank_id, config, images,
        load_texts(layout, textbank_id, model_id), texts, classify, waffles, banks,
    )  # fmt: skip


def _check_split_id(layout: Layout, run_id: str, manifest: dict[str, Any], dataset: str, split: str) -> None:
    """A run is re-scored on exactly its own images: the split id its manifest records (the ingest marker's
    `split_id` when it ran) must be the split's id now."""
    recorded = manifest.get("split_id")
    if not recorded:
        return
    now = (ingest_info(layout.shard_dir(dataset, split)) or {}).get("split_id")
    if now != recorded:
        raise ValueError(
            f"run {run_id} was computed on split {split} {recorded} of dataset {dataset}; the split is now "
            f"{now or 'not ingested'} (re-ingested or re-split): re-run it"
        )


def _check_predicted_images(layout: Layout, run_id: str, dataset: str, split: str, images: ImageSet) -> None:
    """For a run without a recorded split id: its predicted samples (keys, labels, image hashes where stored) must
    be the split's images now."""
    path = layout.run_file(run_id, "predictions.parquet")
    if not path.exists():
        return
    table = read_table(path)
    first = table.filter(pc.equal(table["method"], table["method"][0])) if table.num_rows else table
    labels = [-1 if v is None else v for v in first["label"].to_pylist()]
    stored = set(zip(first["sample_key"].to_pylist(), labels, strict=True))
    if stored != set(zip(images.keys, images.labels.tolist(), strict=True)):
        raise ValueError(
            f"run {run_id} was computed on other images than split {split} of dataset {dataset} holds now "
            "(re-ingested or re-split): re-run it"
        )


def _run_split(layout: Layout, run_id: str, config: dict[str, Any]) -> str:
    """The split a run classified: its predictions say, else its configuration."""
    path = layout.run_file(run_id, "predictions.parquet")
    if path.exists():
        split = read_table(path, columns=["split"])["split"]
        if len(split):
            return str(split[0])
    return str((config.get("dataset") or {}).get("split") or "test")
