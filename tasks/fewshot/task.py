"""Prefect tasks of a few-shot run: plan support sets, write augmented views, predict per (shots, seed), collect."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from coderflow.config import DatasetConfig, FewShotConfig
from coderflow.results import CellPredictions, ShiftTarget, SupportPlan
from coderflow.storage.arrays import ImageSet, load_images, load_texts
from coderflow.storage.atomic import atomic_path, write_text
from coderflow.storage.db import query, sql_file
from coderflow.storage.layout import Layout, content_id
from coderflow.storage.parquet_io import read_table, write_table
from coderflow.storage.schemas import FEWSHOT_SUPPORT, PREDICTIONS
from coderflow.storage.shards import (
    DamagedFile,
    ingest_info,
    iter_samples,
    list_shards,
    read_class_file,
    sample_label,
    split_image_hashes,
    split_overlaps,
    write_split,
)
from coderflow.tasks.classify.methods import ensemble_classifier
from coderflow.tasks.classify.predict import prediction_table
from coderflow.tasks.fewshot import methods as fm
from coderflow.tasks.fewshot.scorers import SCORERS, Cell, stored_name
from coderflow.tasks.fewshot.shift import class_columns
from coderflow.tasks.fewshot.support import (
    augmented_samples,
    average_views,
    plan_supports,
    sample_source_path,
    source_key,
)
from coderflow.tasks.ingest.checks import check_distinct_splits, check_same_classes
from coderflow.tasks.report.shift import SHIFT_NOTE, shift_table
from coderflow.tasks.report.tables import markdown_escape, markdown_table


@task(name="check-splits")
def refuse_shared_splits(dataset: DatasetConfig, splits: list[str], workdir: str) -> None:
    """Before any work: the splits must not resolve to the same source folder, and must have the same classes."""
    check_distinct_splits(dataset, splits)
    check_same_classes(dataset, splits)


@task(name="check-split-overlap")
def refuse_overlapping_splits(
    dataset: str, splits: list[str], workdir: str, tests: list[tuple[str, str]] | None = None
) -> None:
    """After ingest, before embedding: no image (by content hash) may be in two of the splits (train, val, test in
    that order), nor may a shifted test set (`tests`: (dataset, split) pairs) hold an image of train or val: the
    support sets are drawn from the one and the search runs on the other."""
    layout = Layout.at(workdir)
    shared = [f"{a} and {b} share {n} images" for a, b, n in split_overlaps(layout, dataset, splits)]
    seen = {s: set(split_image_hashes(layout, dataset, s)) for s in splits[:2]}
    for name, split in tests or []:
        hashes = set(split_image_hashes(layout, name, split))
        shared += [f"test set {name} and {s} share {n} images" for s, h in seen.items() if (n := len(hashes & h))]
    if shared:
        raise ValueError(
            f"dataset {dataset!r}: {'; '.join(shared)} (same image content): few-shot figures would be "
            "measured on images seen in the support set or the search; give disjoint splits and test sets, or use "
            "--split-ratio on one folder"
        )


@task(name="map-test-classes")
def map_test_classes(dataset: str, targets: list[DatasetConfig], workdir: str) -> list[ShiftTarget]:
    """After ingest, before embedding: each shifted test set's classes as source classes, matched by name."""
    layout = Layout.at(workdir)
    source = read_class_file(str(layout.classnames_file(dataset))) or []
    return [
        ShiftTarget(
            t.name, t.split,
            class_columns(source, read_class_file(str(layout.classnames_file(t.name))) or [], t.name, dataset),
        )
        for t in targets
    ]  # fmt: skip


@task(name="plan-support-sets")
def plan_support_sets(dataset: str, train_split: str, n_classes: int, cfg: FewShotConfig, workdir: str) -> SupportPlan:
    """Support keys for every (shots, seed) from the train split's labels (no image is decoded)."""
    shards = list_shards(Layout.at(workdir).shard_dir(dataset, train_split))
    if not shards:
        raise FileNotFoundError(f"no shards for {dataset}/{train_split}: ingest the train split first")
    keys, labels, paths = [], [], []
    for shard in shards:  # the train order: shard order, samples in their order (a CoOp split file's order)
        for s in iter_samples(shard):
            label = sample_label(s)
            if label is not None and 0 <= label < n_classes:
                keys.append(s["__key__"])
                labels.append(label)
                paths.append(sample_source_path(s))
    sets, short = plan_supports(keys, np.asarray(labels), cfg.shots, cfg.seeds, n_classes, cfg.sampling)
    if short:
        took = "drew with repetition" if cfg.sampling == "reference" else "took all"
        get_run_logger().warning("classes with fewer train samples than shots (%s): %s", took, short)
    pool = sorted({k for ks in sets.values() for k in ks})
    path_of = dict(zip(keys, paths, strict=True))
    return SupportPlan(sets, pool, short, {k: path_of[k] for k in pool})


@task(name="write-augmented-split")
def write_augmented_split(
    dataset: str, train_split: str, pool: list[str], views: int, seed: int, samples_per_shard: int, workdir: str
) -> str:
    """Shards of `views` augmented views of each pooled train image, as a split of its own (reused when unchanged)."""
    layout = Layout.at(workdir)
    train_id = (ingest_info(layout.shard_dir(dataset, train_split)) or {}).get("split_id", "")
    # keyed by the train split's content too: a re-ingested train split never matches old augmented views
    split = f"{train_split}-aug-{content_id(train_id, str(views), str(seed), *pool, length=10)}"
    out = layout.shard_dir(dataset, split)
    try:
        done = ingest_info(out)
    except DamagedFile:  # written again below
        done = None
    if done is None:
        wanted = set(pool)
        raw = (
            s for shard in list_shards(layout.shard_dir(dataset, train_split)) for s in iter_samples(shard)
            if s["__key__"] in wanted
        )  # fmt: skip
        info = {"kind": "augmented", "from_split": train_split, "views": views, "seed": seed, "pool": len(pool)}
        write_split(augmented_samples(raw, views, seed), out, f"{split}-%06d.tar", samples_per_shard, info)
    return split


@dataclass(frozen=True)
class _Features:
    """One image encoder's features of a cell: validation and test splits, and the support set."""

    val: ImageSet
    test: ImageSet
    support: np.ndarray
    support_labels: np.ndarray
    support_keys: list[str]


def _features(
    layout: Layout, model_id: str, dataset: str, cfg: FewShotConfig, support_split: str, support_keys: list[str]
) -> _Features:
    """Val, test and support features of one model; support rows are the augmented views' mean, or (augment_views
    0) the train images' stored embeddings."""
    pool = load_images(layout, model_id, dataset, support_split)
    if cfg.augment_views > 0:
        by_key = average_views(pool.keys, pool.x)
        label_of = dict(zip((source_key(k) for k in pool.keys), pool.labels.tolist(), strict=True))
    else:
        by_key = dict(zip(pool.keys, pool.x, strict=True))
        label_of = dict(zip(pool.keys, pool.labels.tolist(), strict=True))
    keys = [k for k in support_keys if k in by_key]
    return _Features(
        load_images(layout, model_id, dataset, cfg.val_split),
        load_images(layout, model_id, dataset, cfg.test_split),
        np.stack([by_key[k] for k in keys]),
        np.asarray([label_of[k] for k in keys]),
        keys,
    )


@dataclass
class _CellOutput:
    """What one few-shot cell stores: prediction tables (one per method and test set) and the chosen
    hyper-parameters as metric rows."""

    run_id: str
    shots: int
    seed: int
    tables: list[pa.Table] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)

    def predictions(
        self, test: ShiftTarget, images: ImageSet, method: str, scores: np.ndarray, logits: bool, cell: bool = True
    ) -> None:
        """`scores` (over every source class) as predictions on `test`: restricted to its classes, in its label
        order; `cell` False: a result of no (shots, seed), e.g. the zero-shot baseline."""
        self.tables.append(
            prediction_table(
                scores[:, np.asarray(test.columns, dtype=np.int64)], images.keys, images.labels, run_id=self.run_id,
                method=method, dataset=test.dataset, split=test.split, logits=logits, image_hash=images.hashes,
                shots=self.shots if cell else None, seed=self.seed if cell else None,
            )
        )  # fmt: skip

    def recorder(self, test: ShiftTarget, images: ImageSet, params: bool) -> Callable[..., None]:
        """The scorers' `record(method, scores, logits, chosen, **extra)` for one test set; with `params`, the chosen
        alpha, beta (gamma) and val accuracy, and any `extra` values, are stored too."""

        def record(method: str, scores: np.ndarray, logits: bool, chosen: Any = None, **extra: float) -> None:
            self.predictions(test, images, method, scores, logits)
            if not params:
                return
            values = (
                {}
                if chosen is None
                else {"alpha": chosen.alpha, "beta": chosen.beta, "val_accuracy": chosen.val_accuracy}
            )
            if chosen is not None and method.startswith("tip_x"):
                values["gamma"] = chosen.gamma
            self.params += [
                {"method": method, "shots": self.shots, "seed": self.seed, "metric": metric, "value": float(value)}
                for metric, value in {**values, **extra}.items() if value is not None
            ]  # fmt: skip

        return record


def _cell_run_name(parameters: dict[str, Any]) -> str:
    shots, seed = str(parameters["cell"]).split("-", 1)  # cells are '<shots>-<seed>'
    return f"few-shot-predict {shots}-shot seed {seed}"


@task(name="few-shot-predict", task_run_name=_cell_run_name)
def fewshot_predict(
    run_id: str,
    cell: str,
    support_keys: list[str],
    dataset: str,
    support_split: str,
    model_id: str,
    adapted_model_id: str | None,
    textbank_id: str,
    cfg: FewShotConfig,
    workdir: str,
    zero_shot: bool = False,
    source_paths: dict[str, str] | None = None,
    targets: list[ShiftTarget] | None = None,
    device: str = "cpu",
) -> CellPredictions:
    """Every few-shot method for one (shots, seed): hyper-parameters from val only, predictions on test; with
    `zero_shot` (one cell of a run) also the zero-shot baseline as method `clip` (shots and seed null).

    The zero-shot term is always CLIP's prompt-ensemble classifier on the ORIGINAL image features; with an adapter,
    each cache method runs again as `<method>_adapted` with the cache affinity from the adapted features (IMO,
    CLIP_fewshot_imo run.py:255-420), Tip-X's KL from the original ones, and both Tip-Adapter variants are searched on
    IMO's grid (run.py:42-47) so that they differ only in their features; the original one is stored as
    `tip_adapter_imo` (scorers.stored_name), never mixed with `tip_adapter` on its own grid. The support rows
    record the sampling rule and each image's `source_paths` entry (its key where there is none).

    The products and searches run on `device` (model.device; tasks/fewshot/methods.py). Each of `targets`
    (fewshot.test_datasets) is scored with the hyper-parameters chosen on the source's val, its
    scores restricted to the classes it has (in its own label order), and stored under its own dataset name.
    """
    layout = Layout.at(workdir)
    shots, seed = (int(v) for v in cell.split("-"))
    bank = load_texts(layout, textbank_id, model_id)
    n = bank.n_classes
    orig = _features(layout, model_id, dataset, cfg, support_split, support_keys)
    variants = {"": orig}
    if adapted_model_id:
        variants["_adapted"] = _features(layout, adapted_model_id, dataset, cfg, support_split, support_keys)
        if variants["_adapted"].test.keys != orig.test.keys or variants["_adapted"].val.keys != orig.val.keys:
            raise ValueError("original and adapted embeddings cover different images: re-run `coderflow embed`")
    w = ensemble_classifier(bank.t, bank.class_index, bank.text_type, n)
    zs_val = fm.zero_shot_logits(orig.val.x, w, device=device)
    onehot = fm.one_hot(orig.support_labels, n)
    coder_rows = np.isin(bank.text_type, ("name", "att", "ana"))  # CODER-Adapter's texts (classify_few_shot.py:129)
    t_coder = bank.t[coder_rows]
    dist = {  # Tip-X class distributions over every source class, original features: the search on val
        "val": fm.class_distribution(orig.val.x, w, cfg.kl_temperature, device=device),
        "support": fm.class_distribution(orig.support, w, cfg.kl_temperature, device=device),
    }
    out = _CellOutput(run_id, shots, seed)
    fitted: dict[str, Any] = {}  # each method's hyper-parameters, chosen on val once for all test sets
    for i, test in enumerate([ShiftTarget(dataset, cfg.test_split, list(range(n))), *(targets or [])]):
        source, cols = i == 0, np.asarray(test.columns, dtype=np.int64)
        images = {  # this test set's features per image encoder
            suffix: f.test if source else load_images(layout, mid, test.dataset, test.split)
            for suffix, f, mid in zip(variants, variants.values(), (model_id, adapted_model_id), strict=False)
        }
        zs_test = fm.zero_shot_logits(images[""].x, w, device=device)
        test_dist = {  # Tip-X's KL on a test set: distributions over the classes it has (the source's: all)
            "test": fm.class_distribution(images[""].x, w[cols], cfg.kl_temperature, device=device),
            "support_test": dist["support"]
            if source
            else fm.class_distribution(orig.support, w[cols], cfg.kl_temperature, device=device),
        }  # fmt: skip
        if zero_shot:  # the baseline every few-shot method starts from: the same in every cell, so stored once
            out.predictions(test, images[""], "clip", zs_test, logits=True, cell=False)
        record = out.recorder(test, images[""], params=source)  # the chosen values are the source's: recorded once
        inputs = Cell(
            cfg, n, zs_val, zs_test, onehot, t_coder, {**dist, **test_dist}, bool(adapted_model_id), record, fitted,
            device,
        )  # fmt: skip
        for method in cfg.methods:
            spec = SCORERS[method]
            for suffix, f in variants.items() if spec.cache else [("", orig)]:
                spec.score(inputs, stored_name(method, suffix, inputs.imo_grid), replace(f, test=images[suffix]))
    part = layout.run_file(run_id, f"fewshot/part-{shots:03d}-{seed:04d}.parquet")
    write_table(pa.concat_tables(out.tables), part, PREDICTIONS)
    n_support, paths = len(orig.support_keys), source_paths or {}
    support = pa.table(
        {
            "run_id": [run_id] * n_support, "shots": [shots] * n_support, "seed": [seed] * n_support,
            "sample_key": orig.support_keys, "label": orig.support_labels.astype(np.int32),
            "sampling": [cfg.sampling] * n_support, "source_path": [paths.get(k, k) for k in orig.support_keys],
        }
    )  # fmt: skip
    support_part = layout.run_file(run_id, f"fewshot/support-{shots:03d}-{seed:04d}.parquet")
    write_table(support, support_part, FEWSHOT_SUPPORT)
    return CellPredictions(str(part), str(support_part), out.params, support=len(orig.support_keys), n_classes=n)


@task(name="collect-predictions")
def collect_predictions(run_id: str, parts: list[str], support_parts: list[str], workdir: str) -> str:
    """One predictions.parquet and one support.parquet (the `fewshot_support` view) for the run from the
    per-(shots, seed) parts."""
    layout = Layout.at(workdir)
    support = pa.concat_tables([read_table(p) for p in sorted(support_parts)])
    write_table(support, layout.run_file(run_id, "support.parquet"), FEWSHOT_SUPPORT)
    table = pa.concat_tables([read_table(p) for p in sorted(parts)])
    return str(write_table(table, layout.run_file(run_id, "predictions.parquet"), PREDICTIONS))


@task(name="plot-accuracy-vs-shots")
def plot_accuracy_vs_shots(run_id: str, workdir: str, n_classes: int | None = None, dataset: str | None = None) -> str:
    """accuracy_vs_shots.png beside the run: mean top-1 over seeds per method, with the spread as error bars, the
    zero-shot CLIP baseline and (given `n_classes`) the chance level; with `dataset`, of that test set only (a run's
    shifted test sets have their own table in the report).

    The same PNG goes to the Prefect UI as an image artifact (`few-shot-accuracy-plot`, a data: URL: the UI cannot
    read files from the work directory).
    """
    from prefect.artifacts import create_image_artifact

    from coderflow.tasks.report import plots

    layout = Layout.at(workdir)
    metrics = read_table(layout.run_file(run_id, "metrics.parquet")).to_pylist()
    summary, zero = plots.shots_curves(
        r for r in metrics
        if r["metric"] == "top1" and r["class_index"] is None and dataset in (None, r["dataset"])
    )  # fmt: skip
    fig = plots.accuracy_vs_shots(summary, f"few-shot run {run_id}", zero, 1 / n_classes if n_classes else None)
    png = plots.render(fig, "png")
    path = layout.run_file(run_id, "accuracy_vs_shots.png")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    create_image_artifact(
        image_url=f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}",
        key="few-shot-accuracy-plot",
        description=f"few-shot run {run_id}: top-1 accuracy vs shots per class (mean and spread over seeds)",
    )
    write_text(json.dumps(summary), layout.run_file(run_id, "accuracy_vs_shots.json"))
    return str(path)


@task(name="few-shot-summary")
def accuracy_table(run_id: str, workdir: str, dataset: str | None = None) -> list[dict[str, Any]]:
    """Mean and std over seeds per method and shots (storage/sql/fewshot_summary.sql), also as a UI artifact; with
    `dataset`, of that test set only."""
    from prefect.artifacts import create_markdown_artifact

    layout = Layout.at(workdir)
    sql = sql_file("fewshot_summary").rstrip().rstrip(";")
    rows = query(layout, sql, {"run_id": run_id} | ({"dataset": dataset} if dataset else {})).to_pylist()
    lines = ["| method | shots | seeds | top-1 mean | std |", "|---|---|---|---|---|"]
    cells = [(r["method"], r["shots"], r["seeds"], r["top1_mean"], r["top1_std"]) for r in rows]
    lines += ["| " + " | ".join(map(markdown_escape, c)) + " |" for c in cells]
    plot = layout.run_file(run_id, "accuracy_vs_shots.png")
    lines.append(f"\nAccuracy vs shots plot: `{plot}`")
    create_markdown_artifact("\n".join(lines), key="few-shot-accuracy", description=f"few-shot run {run_id}")
    return rows


@task(name="few-shot-shift")
def shift_summary(run_id: str, workdir: str) -> list[dict[str, Any]]:
    """The distribution-shift table (tasks/report/shift.py: source, each shifted test set, their average), also as a
    UI artifact."""
    from prefect.artifacts import create_markdown_artifact

    rows = shift_table(Layout.at(workdir), run_id)
    if rows:
        create_markdown_artifact(
            f"{SHIFT_NOTE}\n\n{markdown_table(rows, list(rows[0]))}",
            key="few-shot-shift",
            description=f"few-shot run {run_id}: shift",
        )
    return rows
