"""A suite's results: the leaderboard view, stats.parquet, benchmark.csv, `coderflow suite report` and its studies."""

from __future__ import annotations

import csv
import html
import io
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from cli_runner import run_cli

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_rows
from coderflow.storage.schemas import SUITE_CELLS
from coderflow.tasks.evaluate.compare import BOOTSTRAP_RESAMPLES
from coderflow.tasks.suite.report import cell_text, result_tables
from coderflow.tasks.suite.stats import paired_against_clip, suite_finished
from coderflow.tasks.suite.studies import (
    RERANK_COLUMNS,
    bank_quality,
    mean_pairwise_cosine,
    rerank_counts,
    restates_class,
)

SUITE = "suite-20261202-abc"
EVIL = "<img src=x onerror=alert(1)> | `x`"


def _cell(layout: Layout, cell_id: str, **fields) -> None:
    now = datetime.now(UTC)
    record = {"suite_id": SUITE, "suite_name": "paper", "cell_id": cell_id, "model": "ViT-S-32-alt", "bank": "offline",
              "axis": None, "status": "completed", "error": None, "seconds": 1.0, "started_at": now,
              "finished_at": now, **fields}  # fmt: skip
    write_rows([record], SUITE_CELLS, layout.suite_cell_file(SUITE, cell_id))


@pytest.fixture(scope="module")
def suite(prefect_server, tmp_path_factory):
    """A zero-shot and a few-shot run of the demo dataset made with the CLI, recorded as the cells of one suite (with
    a failed cell) as the suite runner records them, then finished."""
    work = tmp_path_factory.mktemp("suite")
    config = {
        "dataset": {"name": "demo", "kind": "demo", "demo_images_per_class": 3, "samples_per_shard": 16},
        "model": {"name": "ViT-S-32-alt", "pretrained": None, "batch_size": 32},
        "texts": {"types": ["name", "att", "ana", "syno", "ovo"], "n_ovo": 1, "ovo_budget": 10},
        "methods": ["clip", "dclip", "coder", "coder_rerank"],
        "classify": {"rerank_threshold": 0.1, "rerank_thresholds": [0.0, 0.1, 2.0]},
        "fewshot": {"shots": [1, 2], "seeds": [1, 2], "augment_views": 0, "methods": ["prototype", "tip_adapter"]},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("run", "fewshot"):
        done = run_cli(["-c", path, command, "--workdir", work])
        assert done.exit_code == 0, done.output
    layout = Layout.at(work)
    runs = {r["flow"]: r for r in query(layout, "SELECT * FROM runs").to_pylist()}
    for kind, flow in (("zeroshot", "pipeline"), ("fewshot", "few-shot")):
        r = runs[flow]
        _cell(layout, kind, kind=kind, dataset="demo", model_id=r["model_id"], textbank_id=r["textbank_id"],
              run_id=r["run_id"])  # fmt: skip
    _cell(layout, "broken", kind="zeroshot", dataset="pets", model_id=None, textbank_id=None, run_id=None,
          status="failed", error=EVIL)  # fmt: skip
    suite_finished(SUITE, str(work))
    return {"layout": layout, "runs": runs, "work": work}


def _metrics(layout: Layout, run_id: str) -> list[dict]:
    return read_table(layout.run_file(run_id, "metrics.parquet")).to_pylist()


def test_leaderboard_means_are_those_of_the_metrics_rows(suite):
    layout = suite["layout"]
    board = query(layout, "SELECT * FROM leaderboard WHERE suite_id = ?", params=[SUITE]).to_pylist()
    done = [r for r in board if r["status"] != "failed"]
    expected = {}
    for kind, flow in (("zeroshot", "pipeline"), ("fewshot", "few-shot")):
        values: dict[tuple, list[float]] = {}
        for m in _metrics(layout, suite["runs"][flow]["run_id"]):
            if m["metric"] == "top1" and m["class_index"] is None:
                values.setdefault((kind, m["method"], m["shots"]), []).append(m["value"])
        expected.update(values)
    got = {(r["cell_id"], r["method"], r["shots"]): r for r in done}
    assert set(got) == set(expected)
    assert ("fewshot", "tip_adapter", 2) in got and ("zeroshot", "coder_rerank", None) in got
    for key, values in expected.items():
        row = got[key]
        assert row["n_seeds"] == len(values)
        assert row["top1_mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
        std = statistics.stdev(values) if len(values) > 1 else None
        assert row["top1_std"] == (None if std is None else pytest.approx(std, abs=1e-12))
    assert {(r["method"], r["shots"]) for r in done if r["delta_vs_clip"] is None} == {("clip", None)}
    failed = [r for r in board if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["dataset"] == "pets"
    assert all(failed[0][c] is None for c in ("method", "top1_mean", "delta_vs_clip", "p_value"))


def _exact_mcnemar(b: int, c: int) -> float:
    n = b + c
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def test_leaderboard_differences_against_an_independent_pairing(suite):
    layout = suite["layout"]
    board = query(layout, "SELECT * FROM leaderboard WHERE suite_id = ? AND delta_vs_clip IS NOT NULL",
                  params=[SUITE]).to_pylist()  # fmt: skip
    checked = 0
    for row in board:
        preds = read_table(layout.run_file(row["run_id"], "predictions.parquet")).to_pylist()
        clip = {p["sample_key"]: p["pred"] == p["label"] for p in preds if p["method"] == "clip" and p["shots"] is None}
        per_seed: dict[int | None, dict[str, tuple[bool, bool]]] = {}
        for p in preds:
            if p["method"] == row["method"] and p["shots"] == row["shots"]:
                per_seed.setdefault(p["seed"], {})[p["sample_key"]] = (p["pred"] == p["label"], clip[p["sample_key"]])
        keys = sorted(set.intersection(*(set(v) for v in per_seed.values())))
        a = np.array([[per_seed[s][k][0] for k in keys] for s in sorted(per_seed)], dtype=float)
        b = np.array([[per_seed[s][k][1] for k in keys] for s in sorted(per_seed)], dtype=float)
        assert row["n_seeds"] == len(per_seed) and row["n_samples"] == len(keys)
        assert row["delta_vs_clip"] == pytest.approx(float(np.mean(a.mean(axis=1) - b.mean(axis=1))), abs=1e-12)
        only_a, only_b = int((a * (1 - b)).sum()), int((b * (1 - a)).sum())
        assert row["p_value"] == pytest.approx(_exact_mcnemar(only_a, only_b), rel=1e-9)
        d = (a - b).mean(axis=0)  # per image, averaged over seeds; the images resampled with numpy's generator
        draws = np.random.default_rng(0).integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))
        low, high = np.quantile(d[draws].mean(axis=1), [0.025, 0.975])
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
        assert row["ci_low"] <= row["delta_vs_clip"] <= row["ci_high"]
        checked += 1
    assert checked == 3 + 2 * 2  # dclip, coder, coder_rerank; prototype and tip_adapter at 1 and 2 shots


def test_pairing_skips_other_images_and_falls_back_to_zero_shot_clip():
    rows = []

    def add(method, shots, seed, key, label, pred, image="h"):
        rows.append({"method": method, "shots": shots, "seed": seed, "dataset": "d", "split": "test",
                     "sample_key": key, "image_hash": image, "label": label, "pred": pred})  # fmt: skip

    for k, (label, clip_pred) in enumerate([(0, 0), (1, 0), (2, 2), (0, 1)]):
        add("clip", -1, -1, f"k{k}", label, clip_pred)
    for seed, preds in ((1, [0, 1, 0, 0]), (2, [1, 1, 2, 0])):
        for k, p in enumerate(preds):
            add("proto", 1, seed, f"k{k}", [0, 1, 2, 0][k], p, image="other" if (seed, k) == (2, 3) else "h")
    table = pa.Table.from_pylist(rows)
    (got,) = paired_against_clip(table, resamples=50)
    # k3 of seed 2 is another image than clip's k3: left out of both seeds; seed 1 right on k0, k1; seed 2 on k1, k2
    assert got["n_seeds"] == 2 and got["n_samples"] == 3 and got["shots"] == 1
    clip_acc = 2 / 3  # k0, k2 of k0..k2
    assert got["delta_vs_clip"] == pytest.approx(((2 / 3 - clip_acc) + (2 / 3 - clip_acc)) / 2)
    assert (got["only_method"], got["only_clip"]) == (2, 2)  # (k1, k1) only the method; (k2 seed 1, k0 seed 2) clip
    assert got["p_value"] == pytest.approx(1.0)


def test_benchmark_csv_and_the_csv_report(suite):
    layout = suite["layout"]
    text = layout.suite_benchmark_file(SUITE).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0])[:8] == ["dataset", "model", "pretrained", "method", "shots", "acc1", "acc5",
                                 "mean_per_class_recall"]  # fmt: skip
    by = {(r["method"], r["shots"]): r for r in rows}
    assert len(by) == len(rows) == 4 + 2 * 2  # one zero-shot clip: the zero-shot cell's, not the few-shot run's too
    for key, flow in ((("coder", ""), "pipeline"), (("tip_adapter", "2"), "few-shot")):
        values = [m["value"] for m in _metrics(layout, suite["runs"][flow]["run_id"]) if m["metric"] == "top5"
                  and m["method"] == key[0] and str(m["shots"] or "") == key[1] and m["class_index"] is None]  # fmt: skip
        assert float(by[key]["acc5"]) == pytest.approx(statistics.fmean(values))
        assert by[key]["model"] == "ViT-S-32-alt" and by[key]["pretrained"] == ""
        assert (by[key]["precision"], by[key]["adapter"]) == ("fp32", "")  # what else sets a model's rows apart
    done = run_cli(["suite", "report", SUITE, "--workdir", suite["work"], "--format", "csv"])
    assert done.exit_code == 0 and done.stdout == text


def test_markdown_report_in_the_papers_layout(suite, tmp_path):
    out = tmp_path / "suite.md"
    done = run_cli(["suite", "report", SUITE, "--workdir", suite["work"], "-o", out])
    assert done.exit_code == 0, done.output
    text = out.read_text()
    zero, one, two = (text.index(f"## Top-1 (%), {s}") for s in ("zero-shot", "1-shot", "2-shot"))
    assert zero < one < two
    header = next(line for line in text[zero:].splitlines() if line.startswith("| method"))
    assert header == "| method | demo | pets | Average |"
    clip_line = next(line for line in text[zero:].splitlines() if line.startswith("| clip |"))
    assert "| failed |" in clip_line  # the failed pets cell
    board = query(suite["layout"], "SELECT * FROM leaderboard WHERE cell_id = 'fewshot' AND method = 'prototype' "
                  "AND shots = 2").to_pylist()[0]  # fmt: skip
    assert f"| prototype | {cell_text(board)} | {100 * board['top1_mean']:.2f} |" in text
    assert "## CODER* re-ranking" in text and "## Text banks" in text
    assert "onerror" in text and "<img" not in text  # the failed cell's error, escaped


def test_html_report_escapes_and_unknown_suites_are_refused(suite):
    done = run_cli(["suite", "report", SUITE, "--workdir", suite["work"], "--format", "html"])
    assert done.exit_code == 0 and done.stdout.startswith("<!DOCTYPE html>")
    assert html.escape(EVIL) in done.stdout and EVIL not in done.stdout
    wrong = run_cli(["suite", "report", "nope", "--workdir", suite["work"]])
    assert wrong.exit_code == 2 and len(wrong.output.strip().splitlines()) == 1
    assert "no suite 'nope'" in wrong.output and SUITE in wrong.output


def test_rerank_study_matches_the_runs_own_count(suite):
    from coderflow.tasks.suite.studies import rerank_study

    layout = suite["layout"]
    cells = query(layout, "SELECT * FROM suite_cells").to_pylist()
    row, *grid = rerank_study(layout, cells)
    run_id = suite["runs"]["pipeline"]["run_id"]
    stored = {m["metric"]: m["value"] for m in _metrics(layout, run_id) if m["method"] == "coder_rerank"}
    assert row["stored"] and row["reranked"] == stored["n_reranked"] > 0
    assert row["corrected"] + row["broken"] + row["changed"] == stored["n_changed"]
    assert row["rerank_top1"] == pytest.approx(stored["top1"])
    # re-scored from the stored embeddings: at the run's threshold exactly its predictions; 0 re-ranks nothing and
    # a threshold above 1 every row
    assert [g["threshold"] for g in grid] == [0.0, 0.1, 2.0] and not any(g["stored"] for g in grid)
    zero, same, every = grid
    assert {k: same[k] for k in RERANK_COLUMNS} == {k: row[k] for k in RERANK_COLUMNS}
    assert zero["reranked"] == 0 and zero["rerank_top1"] == zero["coder_top1"] == row["coder_top1"]
    assert every["reranked"] == every["rows"] == row["rows"]


def test_rerank_counts_on_fixed_arrays():
    label = np.array([0, 1, 2, 0, 1])
    coder = np.array([0, 0, 2, 1, 1])
    rerank = np.array([1, 1, 2, 2, 1])
    margin = np.array([0.01, 0.05, 0.02, 0.3, 0.9], dtype=np.float32)
    got = rerank_counts(label, coder, rerank, margin, threshold=0.1)
    assert got == {"rows": 5, "reranked": 3, "corrected": 1, "broken": 1, "changed": 1, "unchanged": 1,
                   "coder_top1": 0.6, "rerank_top1": 0.6}  # fmt: skip


def test_text_bank_quality_on_fixed_vectors():
    e = np.eye(3)
    texts = [
        {"class_index": 0, "class_name": "red fox", "text_type": "name", "text": "a photo of a red fox", "embedding": e[0]},
        {"class_index": 0, "class_name": "red fox", "text_type": "att", "text": "Red fox which has", "embedding": e[0]},
        {"class_index": 0, "class_name": "red fox", "text_type": "att", "text": "red fox, which has fur",
         "embedding": (e[0] + e[1]) / np.sqrt(2)},
        {"class_index": 0, "class_name": "red fox", "text_type": "att", "text": "red  fox which has", "embedding": e[2]},
        {"class_index": 1, "class_name": "owl", "text_type": "name", "text": "a photo of an owl", "embedding": e[1]},
    ]  # fmt: skip
    rows = {r["text_type"]: r for r in bank_quality(texts)}
    att = rows["att"]
    assert (att["count"], att["duplicates"], att["restating"], att["classes_without"]) == (3, 1, 2, 1)
    assert att["cosine_to_name"] == pytest.approx((1 + 1 / np.sqrt(2) + 0) / 3)
    assert att["cosine_within_class"] == pytest.approx((1 / np.sqrt(2) + 0 + 0) / 3)
    assert rows["name"]["restating"] is None and rows["name"]["cosine_within_class"] is None
    assert restates_class("A photo of a Red Fox.", "red fox") and not restates_class("a fox with a tail", "red fox")
    v = np.random.default_rng(0).normal(size=(5, 4))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    brute = np.mean([v[i] @ v[j] for i in range(5) for j in range(5) if i != j])
    assert mean_pairwise_cosine(v) == pytest.approx(brute)


def test_tables_show_published_numbers_and_failures():
    rows = [
        {"suite_id": SUITE, "cell_id": "a", "run_id": "r", "dataset": "cub", "model": "RN50/openai", "bank": "b",
         "axis": None, "kind": "zeroshot", "method": m, "shots": None, "n_seeds": 1, "top1_mean": v, "top1_std": None,
         "delta_vs_clip": None if m == "clip" else v - 0.45, "p_value": None if m == "clip" else 0.01,
         "status": "completed"}
        for m, v in (("clip", 0.45), ("coder", 0.5))
    ] + [{"suite_id": SUITE, "cell_id": "f", "run_id": None, "dataset": "dtd", "model": "RN50/openai", "bank": "b",
          "axis": None, "kind": "zeroshot", "method": None, "shots": None, "status": "failed"}]  # fmt: skip
    (section,) = result_tables(rows, {("r", "clip", None): 0.4518})
    table, columns = section.tables[0]
    assert columns == ["method", "cub", "dtd", "Average"]
    assert table == [{"method": "clip", "cub": "45.00 (paper 45.18)", "dtd": "failed", "Average": ""},
                     {"method": "coder", "cub": "50.00*", "dtd": "failed", "Average": ""}]  # fmt: skip


def test_docs_name_the_leaderboard():
    text = (Path(__file__).parents[1] / "docs" / "results.md").read_text()
    assert "leaderboard" in text and "coderflow suite report" in text


def test_regression_watch_names_drops_beyond_the_interval():
    from coderflow.tasks.suite.watch import Z95, half_width, regressions

    def row(cell: str, method: str, top1: float, n: int = 400, std: float | None = None, seeds: int = 1) -> dict:
        return {"cell_id": cell, "method": method, "shots": None, "top1_mean": top1, "n_samples": n,
                "top1_std": std, "n_seeds": seeds, "dataset": "d", "model_id": "m", "textbank_id": "b",
                "run_id": f"r-{cell}-{top1}"}  # fmt: skip

    assert half_width(row("a", "coder", 0.5)) == pytest.approx(Z95 * (0.25 / 400) ** 0.5)  # 0.049
    assert half_width(row("a", "coder", 0.5, std=0.2, seeds=4)) == pytest.approx(Z95 * 0.1)  # the seeds' spread
    before = [row("a", "coder", 0.60), row("a", "clip", 0.50), row("b", "coder", 0.70), row("gone", "coder", 0.9)]
    now = [row("a", "coder", 0.50), row("a", "clip", 0.47), row("b", "coder", 0.72), row("new", "coder", 0.1)]
    worse = regressions(before, now)
    assert [(w["method"], round(w["drop"], 2)) for w in worse] == [("coder", 0.10)]  # 0.03 < 0.049: not named
    assert worse[0]["run_before"] == "r-a-0.6" and worse[0]["run_now"] == "r-a-0.5"
