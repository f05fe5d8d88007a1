"""Distribution shift (fewshot.test_datasets): class mapping by name, scores restricted, one metrics row per test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from conftest import png_bytes

from coderflow.config import DatasetConfig, FewShotConfig
from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.fewshot.shift import class_columns, class_key
from coderflow.tasks.report.shift import shift_rows

SOURCE_CLASSES = ("red_apple", "green_leaf", "blue_sky", "dark_night")


def _folder(root: Path, classes: tuple[str, ...], per_class: int, offset: int) -> Path:
    """One sub-folder per class; every image differs in content (colour from class name and index)."""
    for name in classes:
        ci = SOURCE_CLASSES.index(name.lower().replace(" ", "_"))
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color = (30 + ci * 60, (offset + i * 29) % 256, (offset * 3 + i * 11 + ci) % 256)
            (root / name / f"{offset + i}.png").write_bytes(png_bytes(color, 24))
    return root


def test_class_columns_match_by_name_in_the_targets_order():
    source = ["red apple", "Green Leaf", "blue_sky"]
    assert class_key("Blue-Sky ") == class_key("blue_sky") == "blue sky"
    assert class_columns(source, ["blue sky", "RED_APPLE"], "t", "s") == [2, 0]
    with pytest.raises(ValueError, match=r"test dataset 't' has 1 classes that source dataset 's' lacks \('cat'\)"):
        class_columns(source, ["cat", "red apple"], "t", "s")
    with pytest.raises(ValueError, match="distinct name"):
        class_columns(source, ["red apple", "Red-Apple"], "t", "s")


def test_shift_rows_pivot_with_target_average():
    rows = [
        {"method": "clip", "shots": None, "dataset": "src", "role": "source", "top1_mean": 0.5},
        {"method": "clip", "shots": None, "dataset": "a", "role": "target", "top1_mean": 0.2},
        {"method": "clip", "shots": None, "dataset": "b", "role": "target", "top1_mean": 0.4},
        {"method": "tip", "shots": 1, "dataset": "src", "role": "source", "top1_mean": 0.7},
        {"method": "tip", "shots": 1, "dataset": "b", "role": "target", "top1_mean": 0.6},
    ]
    out = shift_rows(rows)
    assert out[0] == {
        "method": "clip",
        "shots": None,
        "source": 0.5,
        "a": 0.2,
        "b": 0.4,
        "target average": pytest.approx(0.3),
    }
    assert out[1]["a"] is None and out[1]["target average"] == 0.6  # a missing value is left out of the average


def test_test_datasets_entries():
    fs = FewShotConfig(test_datasets=("imagenetv2", "sketch=/data/sketch"))
    bench, folder = fs.target_datasets(DatasetConfig(benchmark_base="/mirror"))
    assert (bench.name, bench.kind, bench.source, bench.split) == (
        "imagenetv2",
        "wds",
        "/mirror/wds_imagenetv2",
        "test",
    )
    assert (folder.name, folder.source) == ("sketch", "/data/sketch")
    with pytest.raises(ValueError, match="did you mean 'imagenetv2'"):
        FewShotConfig(test_datasets=("imagenetv9",))
    with pytest.raises(ValueError, match="named twice"):
        FewShotConfig(test_datasets=("a=/x", "a=/y"))
    with pytest.raises(ValueError, match="names the source dataset 'demo'"):
        FewShotConfig(test_datasets=("demo=/x",)).target_datasets(DatasetConfig())


@pytest.mark.flow
def test_shift_run_scores_each_test_set_on_its_own_classes(prefect_server, tmp_path):
    src = _folder(tmp_path / "src", SOURCE_CLASSES, per_class=8, offset=0)
    full = _folder(tmp_path / "full", SOURCE_CLASSES, per_class=3, offset=100)
    part = _folder(tmp_path / "part", ("dark night", "green_leaf"), per_class=3, offset=200)  # 2 of 4, other order
    workdir = tmp_path / "work"
    base = ["fewshot", "--workdir", workdir, "--source", src, "--kind", "folder", "--split-ratio", "0.5,0.25,0.25"]
    base += ["--shots", "1,2", "--seeds", "1,2", "--texts.types", "name", "--fewshot.augment-views", "0"]
    base += ["--fewshot.methods", "prototype,tip_adapter", "--fewshot.alphas", "0.5,1", "--fewshot.betas", "1,5"]

    missing = _folder(tmp_path / "odd", ("red_apple",), per_class=1, offset=300)
    (missing / "purple_cat").mkdir()
    (missing / "purple_cat" / "0.png").write_bytes(png_bytes((1, 2, 3), 24))
    refused = run_cli([*base, "--fewshot.test-datasets", f"odd={missing}"])
    assert refused.exit_code != 0 and "'purple cat'" in refused.output and "lacks" in refused.output
    assert not (workdir / "runs").exists()  # refused before any work

    copied = run_cli([*base, "--fewshot.test-datasets", f"copy={src}"])  # the source's own images as a test set
    assert copied.exit_code != 0 and "test set copy and train share" in copied.output, copied.output
    assert not (workdir / "runs").exists()  # refused before any scoring

    out = run_cli([*base, "--fewshot.test-datasets", f"full={full},part={part}"])
    assert out.exit_code == 0, out.output
    assert "distribution shift of run" in out.output
    layout = Layout.at(workdir)
    q = lambda sql: query(layout, sql).to_pylist()  # noqa: E731
    (run_id,) = [r["run_id"] for r in q("SELECT run_id FROM runs")]
    top1 = q("SELECT dataset, method, shots, seed, value FROM metrics WHERE metric = 'top1' AND class_index IS NULL")
    for dataset in ("src", "full", "part"):  # one metrics row per test set, method and cell, plus the baseline
        rows = [r for r in top1 if r["dataset"] == dataset]
        assert len(rows) == 2 * 2 * 2 + 1, (dataset, rows)
    chosen = q("SELECT DISTINCT dataset FROM metrics WHERE metric IN ('alpha', 'beta')")
    assert chosen == [{"dataset": "src"}]  # the hyper-parameters are the source's val's, recorded once

    # 'part' has 2 of the 4 classes: its scores are restricted to them, in its own label order
    preds = q("SELECT method, shots, seed, label, pred, top5 FROM predictions WHERE dataset = 'part'")
    assert preds and {p["pred"] for p in preds} <= {0, 1} and all(set(p["top5"]) <= {0, 1} for p in preds)
    names = {r["class_name"]: r["class_index"] for r in q("SELECT * FROM classes WHERE dataset = 'part'")}
    assert names == {"dark night": 0, "green leaf": 1}

    # prototype on 'part' recomputed independently: nearest class mean of the support set over its two classes
    rows = q("SELECT dataset, split, sample_key, embedding FROM image_embeddings")
    x = {(r["dataset"], r["split"], r["sample_key"]): np.asarray(r["embedding"]) for r in rows}
    support = q("SELECT seed, sample_key, label FROM fewshot_support WHERE shots = 2")
    test = q("SELECT sample_key, label FROM image_embeddings WHERE dataset = 'part'")
    src_classes = {r["class_name"]: r["class_index"] for r in q("SELECT * FROM classes WHERE dataset = 'src'")}
    cols = [src_classes["dark night"], src_classes["green leaf"]]
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    for seed in (1, 2):
        rows = [s for s in support if s["seed"] == seed]
        means = np.stack(
            [
                unit(np.mean([unit(x["src", "train", s["sample_key"]]) for s in rows if s["label"] == c], 0))
                for c in cols
            ]
        )
        expected = {t["sample_key"]: int(np.argmax(unit(x["part", "test", t["sample_key"]]) @ means.T)) for t in test}
        stored = q(
            f"SELECT sample_key, pred FROM predictions WHERE dataset = 'part' AND method = 'prototype' AND shots = 2 "
            f"AND seed = {seed}"
        )
        assert {s["sample_key"]: s["pred"] for s in stored} == expected

    report = run_cli(["report", run_id, "--workdir", workdir, "-o", tmp_path / "shift.md"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "shift.md").read_text()
    assert "## Distribution shift" in text and "target average" in text

    def mean(dataset: str, method: str) -> float:
        return float(
            np.mean([r["value"] for r in top1 if (r["dataset"], r["method"], r["shots"]) == (dataset, method, 2)])
        )

    avg = (mean("full", "tip_adapter") + mean("part", "tip_adapter")) / 2
    row = [line for line in text.splitlines() if line.startswith("| tip_adapter | 2 |")][-1]  # the shift table's
    assert f"{avg:.4f}" in row  # the target average of the shift table
    metrics = next(line for line in text.splitlines() if line.startswith("| prototype | 2 |"))
    assert f"{mean('src', 'prototype'):.4f}" in metrics  # the run's own tables are of its own test set
