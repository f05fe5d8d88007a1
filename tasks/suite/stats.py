"""A suite's figures once it ends: each cell's methods paired against clip (stats.parquet) and benchmark.csv."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coderflow.storage.atomic import write_text
from coderflow.storage.db import query, refresh_views
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_rows
from coderflow.storage.schemas import SUITE_STATS
from coderflow.tasks.evaluate.compare import BOOTSTRAP_RESAMPLES, bootstrap_ci, mcnemar_exact

CLIP = "clip"
# the labelled predictions of one run; shots and seed -1 where NULL (zero-shot, a single seed)
PREDICTIONS_SQL = (
    "SELECT method, coalesce(shots, -1) AS shots, coalesce(seed, -1) AS seed, dataset, split, sample_key, "
    "image_hash, label, pred FROM predictions WHERE run_id = ? AND label IS NOT NULL"
)
CELLS_SQL = "SELECT * FROM suite_cells WHERE suite_id = ? ORDER BY dataset, model, bank, kind, axis, cell_id"
BENCHMARK_COLUMNS = ("dataset", "model", "pretrained", "method", "shots", "acc1", "acc5", "mean_per_class_recall",
                     "bank", "axis", "precision", "adapter")  # fmt: skip


def _clip_group(groups: Mapping[tuple[str, int, int], np.ndarray], shots: int, seed: int) -> tuple | None:
    """The clip predictions a (shots, seed) cell is paired with: clip of the same shots and seed, else of the same
    shots (its first seed), else zero-shot clip (its first seed); None without clip."""
    for s in (shots, -1):
        if (CLIP, s, seed) in groups:
            return CLIP, s, seed
        seeds = sorted(k[2] for k in groups if k[0] == CLIP and k[1] == s)
        if seeds:
            return CLIP, s, seeds[0]
    return None


def paired_against_clip(table: pa.Table, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[dict[str, Any]]:
    """Each method (and shots) of one run's predictions (PREDICTIONS_SQL columns) against clip of the same run.

    Per seed, the method's samples are paired with clip's (clip of the same shots and seed, else zero-shot clip) by
    dataset, split and sample key, and by image hash where both have one. Over the images paired in every seed:
    delta = mean over seeds of the accuracy difference; the 95% interval a paired bootstrap resampling images, each
    image carrying its correctness averaged over seeds (compare.bootstrap_ci); p the exact McNemar test on the
    discordant (image, seed) pairs pooled (compare.mcnemar_exact). With one seed these are `coderflow compare`'s
    statistics. Rows: method, shots (None: zero-shot), n_seeds, n_samples, delta_vs_clip, ci_low, ci_high, p_value,
    only_method, only_clip.
    """
    if table.num_rows == 0:
        return []
    key = pc.binary_join_element_wise(table["dataset"], table["split"], table["sample_key"], "\x1f")
    keys = pc.dictionary_encode(key).combine_chunks().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    hashes = pc.dictionary_encode(table["image_hash"]).combine_chunks()
    image = pc.fill_null(hashes.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    correct = table["label"].to_numpy(zero_copy_only=False) == table["pred"].to_numpy(zero_copy_only=False)
    coded = pc.dictionary_encode(table["method"]).combine_chunks()
    names = coded.dictionary.to_pylist()
    cell = np.stack(
        [
            coded.indices.to_numpy(zero_copy_only=False),
            *(table[c].to_numpy(zero_copy_only=False) for c in ("shots", "seed")),
        ],
        axis=1,
    ).astype(np.int64)
    found, which = np.unique(cell, axis=0, return_inverse=True)
    order = np.argsort(which.reshape(-1), kind="stable")
    bounds = np.searchsorted(which.reshape(-1)[order], np.arange(len(found) + 1))
    groups = {(names[m], int(sh), int(e)): order[bounds[i] : bounds[i + 1]] for i, (m, sh, e) in enumerate(found)}
    n_keys = int(keys.max()) + 1
    rows = []
    for method, s in sorted({(m, sh) for m, sh, _ in groups if m != CLIP}, key=lambda x: (x[1], x[0])):
        sum_a, sum_b = np.zeros(n_keys), np.zeros(n_keys)
        only_a, only_b, count = np.zeros(n_keys), np.zeros(n_keys), np.zeros(n_keys, dtype=np.int64)
        cell_seeds = sorted(e for m, sh, e in groups if (m, sh) == (method, s))
        paired_seeds = 0
        for e in cell_seeds:
            ref = _clip_group(groups, s, e)
            if ref is None:
                continue
            paired_seeds += 1
            a, b = groups[(method, s, e)], groups[ref]
            where = np.full(n_keys, -1, dtype=np.int64)
            where[keys[b]] = b
            j = where[keys[a]]
            ok = (j >= 0) & ((image[a] < 0) | (image[np.maximum(j, 0)] < 0) | (image[a] == image[np.maximum(j, 0)]))
            a, j = a[ok], j[ok]
            ca, cb = correct[a].astype(np.float64), correct[j].astype(np.float64)
            k = keys[a]
            sum_a[k] += ca
            sum_b[k] += cb
            only_a[k] += ca * (1 - cb)
            only_b[k] += cb * (1 - ca)
            count[k] += 1
        if paired_seeds == 0:
            continue
        every = count == paired_seeds
        mean_a, mean_b = sum_a[every] / paired_seeds, sum_b[every] / paired_seeds
        n = int(every.sum())
        low, high = bootstrap_ci(mean_a, mean_b, resamples, seed) if n else (None, None)
        b_, c_ = int(only_a[every].sum()), int(only_b[every].sum())
        rows.append({
            "method": method, "shots": None if s < 0 else int(s), "n_seeds": paired_seeds, "n_samples": n,
            "delta_vs_clip": float(np.mean(mean_a - mean_b)) if n else None, "ci_low": low, "ci_high": high,
            "p_value": mcnemar_exact(b_, c_) if n else None, "only_method": b_, "only_clip": c_,
        })  # fmt: skip
    return rows


def suite_cells(layout: Layout, suite_id: str) -> list[dict[str, Any]]:
    """The cells of one suite run; an unknown suite id is refused in one line listing the known ones."""
    cells = query(layout, CELLS_SQL, params=[suite_id]).to_pylist()
    if not cells:
        known = [
            r["suite_id"] for r in query(layout, "SELECT DISTINCT suite_id FROM suite_cells ORDER BY 1").to_pylist()
        ]
        listed = ", ".join(known) if known else "none yet (run `coderflow suite -c FILE`)"
        raise ValueError(f"no suite {suite_id!r} in {layout.root}: known suites: {listed}")
    return cells


def compute_stats(
    layout: Layout, suite_id: str, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> list[dict[str, Any]]:
    """SUITE_STATS rows of every cell that has a run: its methods paired against clip (paired_against_clip)."""
    rows = []
    for cell in suite_cells(layout, suite_id):
        if not cell["run_id"] or cell["status"] == "failed":
            continue
        table = query(layout, PREDICTIONS_SQL, params=[cell["run_id"]])
        for r in paired_against_clip(table, resamples, seed):
            rows.append({"suite_id": suite_id, "cell_id": cell["cell_id"], "run_id": cell["run_id"], **r})
    return rows


def benchmark_rows(layout: Layout, suite_id: str) -> list[dict[str, Any]]:
    """One row per dataset, model, bank, axis, method and shots of the suite's finished cells, CLIP_benchmark's
    columns (acc1, acc5, mean_per_class_recall: means over seeds); a zero-shot result of a few-shot cell (its clip
    baseline) only where no zero-shot cell gave one."""
    table = query(
        layout,
        "SELECT c.kind, c.dataset, c.model, c.bank, c.axis, r.config, m.method, m.shots, "
        "avg(m.value) FILTER (WHERE m.metric = 'top1') AS acc1, avg(m.value) FILTER (WHERE m.metric = 'top5') AS acc5, "
        "avg(m.value) FILTER (WHERE m.metric = 'mean_per_class_recall') AS mean_per_class_recall "
        "FROM suite_cells c JOIN metrics m USING (run_id) LEFT JOIN runs r USING (run_id) "
        "WHERE c.suite_id = ? AND c.status <> 'failed' AND m.class_index IS NULL GROUP BY ALL "
        "ORDER BY c.dataset, c.model, c.bank, c.axis, m.shots NULLS FIRST, m.method, c.kind DESC",
        params=[suite_id],
    ).to_pylist()
    out: dict[tuple, dict[str, Any]] = {}
    for r in table:
        if r["acc1"] is None:
            continue
        model = (json.loads(r["config"] or "{}").get("model") or {}) if r["config"] else {}
        name, _, tag = str(r["model"] or "").partition("/")
        row = {
            "dataset": r["dataset"], "model": model.get("name") or name, "pretrained": model.get("pretrained") or tag,
            "method": r["method"], "shots": r["shots"], "acc1": r["acc1"], "acc5": r["acc5"],
            "mean_per_class_recall": r["mean_per_class_recall"], "bank": r["bank"], "axis": r["axis"],
            "precision": model.get("precision") or "fp32", "adapter": model.get("adapter"),
        }  # fmt: skip
        # keyed by the cell's model label (name, weights, precision, adapter; one per models entry): two entries
        # that share a name and weights stay two rows
        out.setdefault((r["dataset"], r["model"], r["bank"], r["axis"], r["method"], r["shots"]), row)
    return list(out.values())


def benchmark_csv(rows: list[dict[str, Any]]) -> str:
    """benchmark_rows as CSV (BENCHMARK_COLUMNS; unrounded fractions, blank where not applicable)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BENCHMARK_COLUMNS)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r[c] for c in BENCHMARK_COLUMNS])
    return out.getvalue()


def suite_finished(suite_id: str, workdir: str) -> None:
    """At the end of a suite run: write suites/<suite_id>/stats.parquet (every cell's methods against clip) and
    benchmark.csv, and rebuild the views so that `leaderboard` shows them."""
    layout = Layout.at(workdir)
    refresh_views(layout)  # the cells written since the views were last built
    rows = compute_stats(layout, suite_id)
    write_rows(rows, SUITE_STATS, layout.suite_stats_file(suite_id))
    write_text(benchmark_csv(benchmark_rows(layout, suite_id)), layout.suite_benchmark_file(suite_id))
    refresh_views(layout)
