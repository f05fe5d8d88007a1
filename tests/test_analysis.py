"""Analysis of stored runs: calibration, SQL macros and views, reference numbers, reports (Chromium), the Python API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from browser import CHROMIUM, Chromium
from cli_runner import run_cli
from test_compare import exact_reference

from coderflow.storage.db import REFERENCE_FILE, query
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table, write_rows, write_table
from coderflow.storage.runs import write_run
from coderflow.storage.schemas import CODER, METRICS, PREDICTIONS, REFERENCE_RESULTS, TEXTS
from coderflow.tasks.classify.methods import margin_confidence
from coderflow.tasks.evaluate.compare import compare
from coderflow.tasks.evaluate.metrics import classification_metrics, expected_calibration_error, reliability
from coderflow.tasks.evaluate.reference import against_reference, reference_key, reference_warnings

CLASSES = ["cat", "dog", "bird", "fish"]


# --- calibration --------------------------------------------------------------------------------------------------


def test_confidence_is_the_softmax_probability_of_the_predicted_class():
    logits = np.array([[0.0, np.log(3.0)], [2.0, 2.0]])
    gap, conf = margin_confidence(logits)
    np.testing.assert_allclose(conf, [0.75, 0.5], atol=1e-7)  # softmax([0, ln 3]) = (1/4, 3/4)
    np.testing.assert_allclose(gap, [0.5, 0.0], atol=1e-7)
    _, forced = margin_confidence(logits, pred=np.array([0, 1]))  # a re-ranked prediction keeps its own probability
    np.testing.assert_allclose(forced, [0.25, 0.5], atol=1e-7)


def test_expected_calibration_error_matches_a_direct_implementation():
    rng = np.random.default_rng(4)
    conf = np.concatenate([rng.random(997), [0.0, 1.0, 1 / 15]])  # the edges: 0, 1 and a bin boundary
    correct = rng.random(1000) < conf
    total = 0.0
    for b in range(15):  # bins (b/15, (b+1)/15], the first also holding 0
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi) | ((b == 0) & (conf == 0))
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    assert expected_calibration_error(conf, correct) == pytest.approx(total / 1000, abs=1e-12)
    assert sum(r["n"] for r in reliability(conf, correct)) == 1000
    assert expected_calibration_error(np.ones(4), np.ones(4, bool)) == 0.0  # confident and right: calibrated


# --- a synthetic work directory: a dataset, a zero-shot and a few-shot run, written with the storage schemas ---------


def _write_dataset(layout: Layout, name: str) -> None:
    folder = layout.dataset_dir(name)
    folder.mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(CLASSES) + "\n\n")
    (folder / "_dataset.json").write_text(json.dumps({"name": name, "kind": "folder", "source": "/data"}))


def _write_predictions(
    layout: Layout, run_id: str, dataset: str, accuracy: dict[str, float], n: int = 400, shots=None, seeds=(None,)
) -> None:
    rng = np.random.default_rng(abs(hash(run_id)) % 2**32)
    labels = rng.integers(0, len(CLASSES), n)
    tables, metrics = [], []
    for method, acc in accuracy.items():
        for s in shots or [None]:
            for seed in seeds:
                right = rng.random(n) < acc
                pred = np.where(right, labels, (labels + 1 + rng.integers(0, 3, n)) % len(CLASSES))
                top5 = np.stack([(pred + k) % len(CLASSES) for k in range(4)], axis=1)
                conf = np.clip(acc + rng.normal(0, 0.1, n), 0.26, 1.0).astype(np.float32)
                tables.append(pa.table({
                    "run_id": [run_id] * n, "method": [method] * n, "dataset": [dataset] * n, "split": ["test"] * n,
                    "shots": pa.array([s] * n, pa.int32()), "seed": pa.array([seed] * n, pa.int32()),
                    "sample_key": [f"k{i:04d}" for i in range(n)], "label": labels.astype(np.int32),
                    "pred": pred.astype(np.int32), "top5": top5.astype(np.int32).tolist(),
                    "margin": np.zeros(n, np.float32), "confidence": conf,
                    "image_hash": [f"h{i:04d}" for i in range(n)],
                }).cast(PREDICTIONS))  # fmt: skip
                for metric, ci, value in classification_metrics(labels, top5, len(CLASSES)):
                    metrics.append({"run_id": run_id, "dataset": dataset, "split": "test", "model_id": "m",
                                    "method": method, "shots": s, "seed": seed, "metric": metric, "class_index": ci,
                                    "value": value})  # fmt: skip
                metrics.append({**metrics[-1], "metric": "ece", "class_index": None,
                                "value": expected_calibration_error(conf, pred == labels)})  # fmt: skip
    write_table(pa.concat_tables(tables), layout.run_file(run_id, "predictions.parquet"), PREDICTIONS)
    write_rows(metrics, METRICS, layout.run_file(run_id, "metrics.parquet"))


def _config(dataset: str, model: str, pretrained: str | None) -> dict:
    return {"preset": None, "dataset": {"name": dataset, "split": "test"},
            "model": {"name": model, "pretrained": pretrained, "precision": "fp32"}, "methods": ["clip", "coder"]}  # fmt: skip


def _write_run(layout: Layout, run_id: str, flow: str, config: dict) -> None:
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    write_run(layout, run_id, flow=flow, status="completed", started_at=start, finished_at=start + timedelta(seconds=42),
              config=config, dataset=config["dataset"]["name"], model_id="m")  # fmt: skip


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Layout:
    layout = Layout.at(tmp_path_factory.mktemp("analysis") / "work")
    _write_dataset(layout, "imagenet")
    # zero-shot on ImageNet with ViT-B-32/openai: clip far below its published numbers (a preprocessing problem)
    _write_run(layout, "zs", "pipeline", _config("imagenet", "ViT-B-32", "openai"))
    _write_predictions(layout, "zs", "imagenet", {"clip": 0.30, "coder": 0.40})
    _write_run(layout, "fs", "few-shot", _config("imagenet", "ViT-S-32-alt", None))
    _write_predictions(layout, "fs", "imagenet", {"clip": 0.3})
    few = layout.run_file("fs", "predictions.parquet")
    zero = read_table(few)
    _write_predictions(layout, "fs", "imagenet", {"tip_adapter": 0.5, "prototype": 0.45}, shots=[1, 2, 4], seeds=(1, 2))
    write_table(pa.concat_tables([zero, read_table(few)]), few, PREDICTIONS)
    metrics = read_table(layout.run_file("fs", "metrics.parquet")).to_pylist()
    metrics.append({**metrics[0], "method": "clip", "shots": None, "seed": None, "metric": "top1", "value": 0.3})
    write_rows(metrics, METRICS, layout.run_file("fs", "metrics.parquet"))
    return layout


def test_sql_macros_give_the_statistics_of_coderflow_compare(synthetic):
    for b, c in [(0, 0), (1, 10), (37, 61), (400, 455)]:
        p = query(synthetic, "SELECT mcnemar_p(?, ?) AS p", params=[b, c])["p"][0].as_py()
        assert p == pytest.approx(exact_reference(b, c), rel=1e-9)
    (row,) = query(synthetic, "SELECT * FROM paired_comparison('zs', 'coder', 'zs', 'clip')").to_pylist()
    pairs = query(synthetic, "SELECT * FROM paired_predictions('zs', 'coder', 'zs', 'clip')")
    label = pairs["label"].to_numpy()
    ref = compare("coder", "clip", pairs["pred_a"].to_numpy() == label, pairs["pred_b"].to_numpy() == label, 4000)
    assert row["n"] == ref.n == 400
    assert (row["accuracy_a"], row["accuracy_b"]) == pytest.approx((ref.accuracy_a, ref.accuracy_b))
    assert row["p_value"] == pytest.approx(ref.p_value, rel=1e-9)
    assert (row["only_a"], row["only_b"]) == (ref.only_a, ref.only_b)
    # DuckDB's hash draws other resamples than numpy: the intervals agree to Monte Carlo error
    assert row["ci_low"] == pytest.approx(ref.ci_low, abs=0.015)
    assert row["ci_high"] == pytest.approx(ref.ci_high, abs=0.015)
    again = query(synthetic, "SELECT * FROM paired_comparison('zs', 'coder', 'zs', 'clip')").to_pylist()
    assert again == [row]  # deterministic
    other = query(synthetic, "SELECT * FROM paired_comparison('zs', 'coder', 'zs', 'clip', random_seed := 5)")
    assert other["ci_low"][0].as_py() != row["ci_low"] or other["ci_high"][0].as_py() != row["ci_high"]
    per_shots = query(synthetic, "SELECT shots, n FROM paired_comparison('fs', 'tip_adapter', 'fs', 'prototype')")
    assert per_shots.to_pylist() == [{"shots": s, "n": 400} for s in (1, 2, 4)]  # seed 1 of each cell


def test_classes_view_reads_each_datasets_class_list(synthetic):
    rows = query(synthetic, "SELECT * FROM classes ORDER BY class_index").to_pylist()
    assert rows == [{"dataset": "imagenet", "class_index": i, "class_name": c} for i, c in enumerate(CLASSES)]


def test_coder_cosines_view_unrolls_dense_and_sparse_files(tmp_path):
    layout = Layout.at(tmp_path / "work")
    bank = [{"text_id": f"t{i}", "textbank_id": "b", "text_index": i, "class_index": i % 2, "class_name": "x",
             "text_type": "att", "text": f"text {i}"} for i in range(3)]  # fmt: skip
    write_rows(bank, TEXTS, layout.textbank_file("b"))
    dense = {"sample_key": "a", "textbank_id": "b", "model_id": "m", "format": "dense", "vector": [0.5, 0.25, 0.125]}
    sparse = {"sample_key": "z", "textbank_id": "b", "model_id": "m", "format": "top2", "indices": [2, 0],
              "values": [0.75, 0.5]}  # fmt: skip
    write_rows([dense], CODER, layout.coder_part("m", "b", "d", "test", "s.parquet"))
    write_rows([sparse], CODER, layout.coder_part("m", "b", "d", "test", "s.parquet", "top2"))
    rows = query(layout, "SELECT sample_key, text_id, text_index, cosine FROM coder_cosines ORDER BY ALL").to_pylist()
    assert rows == [
        {"sample_key": "a", "text_id": "t0", "text_index": 0, "cosine": 0.5},
        {"sample_key": "a", "text_id": "t1", "text_index": 1, "cosine": 0.25},
        {"sample_key": "a", "text_id": "t2", "text_index": 2, "cosine": 0.125},
        {"sample_key": "z", "text_id": "t0", "text_index": 0, "cosine": 0.5},
        {"sample_key": "z", "text_id": "t2", "text_index": 2, "cosine": 0.75},
    ]


# --- reference numbers --------------------------------------------------------------------------------------------


def test_reference_table_is_well_formed(synthetic):
    from coderflow.tasks.classify.zeroshot import SCORERS as ZERO_SHOT
    from coderflow.tasks.fewshot.scorers import SCORERS as FEW_SHOT

    table = pacsv.read_csv(REFERENCE_FILE, convert_options=pacsv.ConvertOptions(column_types=REFERENCE_RESULTS))
    assert table.column_names == REFERENCE_RESULTS.names and table.num_rows > 100
    rows = table.to_pylist()
    assert all(0 < r["value"] <= 1 for r in rows)
    keys = [
        (r["dataset"], r["backbone"], r["pretrained"], r["method"], r["shots"], r["metric"], r["source"]) for r in rows
    ]
    assert len(set(keys)) == len(keys)
    known = set(ZERO_SHOT) | set(FEW_SHOT) | {"tip_adapter_f"}
    assert {r["method"] for r in rows} <= known
    assert all((r["shots"] is None) == (r["method"] in ZERO_SHOT) for r in rows)
    assert query(synthetic, "SELECT count(*) AS n FROM reference_results")["n"][0].as_py() == table.num_rows


def test_a_run_is_matched_to_published_numbers_of_its_own_setting():
    refs = [
        {"dataset": "imagenet", "backbone": "ViT-B-32", "pretrained": "openai", "method": "clip", "shots": None,
         "metric": "top1", "value": 0.63, "source": "paper A"},
        {"dataset": "imagenet", "backbone": "ViT-B-16", "pretrained": "openai", "method": "clip", "shots": None,
         "metric": "top1", "value": 0.68, "source": "paper A"},
        {"dataset": "imagenet", "backbone": "ViT-B-32", "pretrained": "openai", "method": "tip_adapter", "shots": 4,
         "metric": "top1", "value": 0.65, "source": "paper B"},
    ]  # fmt: skip
    key = reference_key({"preset": "imagenet", "dataset": {"name": "in1k"}, "model": {"name": "ViT-B-32",
                         "pretrained": "openai"}})  # fmt: skip
    assert key == ("imagenet", "ViT-B-32", "openai")  # the preset names the dataset, whatever the run called it
    results = [{"method": "clip", "shots": None, "metric": "top1", "value": 0.55},
               {"method": "tip_adapter", "shots": 4, "metric": "top1", "value": 0.66},
               {"method": "tip_adapter", "shots": 8, "metric": "top1", "value": 0.70}]  # fmt: skip
    rows = against_reference(results, refs, key)
    assert [(r["method"], r["shots"], round(r["difference"], 4)) for r in rows] == [
        ("clip", None, -0.08), ("tip_adapter", 4, 0.01)
    ]  # fmt: skip
    (warning,) = reference_warnings(rows, key)  # a baseline 8 points off; the few-shot method is no baseline
    assert "clip top-1 0.5500 is 8.0 points below the reference 0.6300 (paper A)" in warning
    assert reference_warnings(rows[:1], key, far=0.1) == []


# --- reports ------------------------------------------------------------------------------------------------------


def test_markdown_report_of_a_zero_shot_run(synthetic, tmp_path):
    out = tmp_path / "r.md"
    done = run_cli(["report", "zs", "--workdir", str(synthetic.root), "-o", out, "--resamples", "200"])
    assert done.exit_code == 0, done.output
    text = out.read_text()
    for heading in ("Configuration", "Metrics", "Reference numbers", "Per-class recall", "Most confused classes",
                    "Calibration"):  # fmt: skip
        assert f"## {heading}" in text
    metrics = text.split("## Metrics", 1)[1].split("## ", 1)[0]
    first, second = [line for line in metrics.splitlines() if line.startswith("| c")][:2]
    assert first.startswith("| coder |") and second.startswith("| clip |")  # best first
    assert "vs clip" in metrics and "95% CI" in metrics and "McNemar p" in metrics
    assert "mlfoundations/open_clip docs/openclip_results.csv" in text
    assert "points below the reference" in done.output
    assert re.search(r"> \*\*Warning:\*\* clip top-1 0\.\d{4} is \d+\.\d points below the reference", text)
    # recall bars, confusion heatmap, reliability diagram: SVG files beside the .md (sites render no data URLs)
    assert "data:image" not in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == [f"r_files/fig-{i}.svg" for i in (1, 2, 3)]
    assert all((tmp_path / link).read_bytes().lstrip().startswith(b"<?xml") for link in links)
    assert f"figures in {tmp_path / 'r_files'}" in done.output
    stdout = run_cli(["report", "zs", "--workdir", str(synthetic.root), "-o", "-", "--resamples", "200"]).stdout
    assert stdout.count("data:image/svg+xml;base64,") == 3  # on stdout there is no folder: the figures are inline


def test_report_refuses_an_unknown_run(synthetic):
    done = run_cli(["report", "nope", "--workdir", str(synthetic.root)])
    assert done.exit_code == 2 and "no run 'nope'" in done.output and "coderflow runs" in done.output


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install chromium")
def test_html_report_of_a_few_shot_run_renders_in_chromium(synthetic, tmp_path):
    out = tmp_path / "fs.html"
    done = run_cli(["report", "fs", "--workdir", str(synthetic.root), "--format", "html", "-o", out])
    assert done.exit_code == 0, done.output
    chromium = Chromium(tmp_path / "profile")
    try:
        chromium.open(out.as_uri())
        chromium.wait_for_text("Accuracy against shots", "Calibration")
        page = chromium.evaluate("""(() => ({
            h2: [...document.querySelectorAll('h2')].map(e => e.textContent),
            figures: [...document.querySelectorAll('figure svg')].map(s => {
                const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
            external: document.querySelectorAll('script, link, img, iframe, [src]').length,
            legend: [...document.querySelectorAll('figure')].map(f => f.textContent).join(' '),
        }))()""")
    finally:
        chromium.close()
    assert page["h2"] == ["Configuration", "Metrics", "Reference numbers", "Per-class recall", "Most confused classes",
                          "Calibration", "Accuracy against shots"]  # fmt: skip
    assert len(page["figures"]) == 4 and all(w > 200 and h > 200 for w, h in page["figures"])
    assert page["external"] == 0  # one file: nothing loaded from elsewhere
    assert "zero-shot CLIP" in page["legend"] and "chance" in page["legend"]


# --- the Python API and `coderflow ablate` on a real pipeline run --------------------------------------------------


@pytest.mark.flow
def test_api_rescoring_reproduces_the_stored_predictions(demo_run):
    from coderflow.api import load_run

    run_id = demo_run["result"].run_id
    run = load_run(run_id, str(demo_run["workdir"]))
    stored = query(
        Layout.at(demo_run["workdir"]), "SELECT method, sample_key, pred FROM predictions WHERE run_id = ? AND "
        "coalesce(seed, -1) = (SELECT coalesce(min(seed), -1) FROM predictions p WHERE p.run_id = ? AND "
        "p.method = predictions.method)", params=[run_id, run_id],
    ).to_pylist()  # fmt: skip
    methods = sorted({r["method"] for r in stored})
    assert {"clip", "coder", "coder_rerank", "waffle", "dclip"} <= set(methods)
    for method in methods:
        want = {r["sample_key"]: r["pred"] for r in stored if r["method"] == method}
        got = dict(zip(run.images.keys, run.score(method).pred.tolist(), strict=True))
        assert got == want, method
    assert run.images.x.shape[0] == len(run.images.labels) and run.bank.t.shape[0] == run.texts.num_rows
    names_only = run.score("coder", texts=["name"])
    assert names_only.n_texts == len(run.class_names)
    pairs = set(zip(run.bank.class_index.tolist(), run.bank.text_type.tolist(), strict=True))
    assert run.score("coder", per_class=1).n_texts == len(pairs)  # the first text of each (class, type)
    with pytest.raises(ValueError, match="text types are"):
        run.score("coder", texts=["atributes"])
    with pytest.raises(ValueError, match="reads a bank of its own"):
        run.score("waffle", texts=["name"])
    shown = repr(run)  # what a notebook prints: one short line, never the arrays
    assert len(shown) < 400 and "\n" not in shown and run_id in shown and "images x" in shown, shown


@pytest.mark.flow
def test_ablate_command_prints_the_text_type_ablation(demo_run):
    run_id, work = demo_run["result"].run_id, str(demo_run["workdir"])
    done = run_cli(["ablate", run_id, "--workdir", work, "--format", "json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert [r["step"] for r in rows] == ["CLIP (prompt ensemble)", "P", "P+Att", "P+Att+Ana", "P+Att+Ana+Syno",
                                         "P+Att+Ana+Syno+OvO (CODER*)"]  # fmt: skip
    assert rows[-2]["n_texts"] > rows[1]["n_texts"]
    stored = query(Layout.at(work), "SELECT method, top1 FROM (" + open_sql("accuracy_per_method") + ") WHERE run_id = ?",
                   params=[run_id]).to_pylist()  # fmt: skip
    top1 = {r["method"]: r["top1"] for r in stored}
    assert rows[0]["top1"] == pytest.approx(top1["clip"], abs=1e-4)  # the full bank reproduces the stored numbers
    assert rows[-2]["top1"] == pytest.approx(top1["coder"], abs=1e-4)


def open_sql(name: str) -> str:
    from coderflow.storage.db import sql_file

    return sql_file(name).rstrip().rstrip(";").rsplit("ORDER BY", 1)[0]


@pytest.mark.flow
def test_each_zero_shot_method_has_a_clip_benchmark_result_file(demo_run):
    layout = Layout.at(demo_run["workdir"])
    run_id = demo_run["result"].run_id
    sql = f"SELECT * FROM ({open_sql('accuracy_per_method')}) WHERE run_id = ? AND shots IS NULL"
    top = query(layout, sql, params=[run_id])
    files = sorted(layout.run_file(run_id, "clip_benchmark").glob("*.json"))
    assert [f.stem for f in files] == sorted(top["method"].to_pylist())
    for f in files:
        result = json.loads(f.read_text())
        assert set(result) >= {"dataset", "model", "pretrained", "task", "metrics", "language"}
        assert result["task"] == "zeroshot_classification" and result["model"] == "ViT-S-32-alt"
        row = next(r for r in top.to_pylist() if r["method"] == f.stem)
        assert result["metrics"] == {"acc1": row["top1"], "acc5": row["top5"],
                                     "mean_per_class_recall": row["mean_per_class_recall"]}  # fmt: skip


def test_report_of_a_run_without_predictions(synthetic, tmp_path):
    """An adapter-overlap run stores metrics only: the report shows them and leaves the per-sample sections out."""
    _write_run(synthetic, "ov", "adapter-overlap", _config("imagenet", "ViT-S-32-alt", None))
    rows = [{"run_id": "ov", "dataset": "imagenet", "split": "test", "model_id": "m", "method": "adapter",
             "shots": None, "seed": None, "metric": "overlap", "class_index": None, "value": 0.25}]  # fmt: skip
    write_rows(rows, METRICS, synthetic.run_file("ov", "metrics.parquet"))
    done = run_cli(["report", "ov", "--workdir", str(synthetic.root), "-o", "-"])
    assert done.exit_code == 0, done.output
    headings = re.findall(r"^## (.+)$", done.stdout, flags=re.M)
    assert headings == ["Configuration", "Metrics", "Reference numbers"]


# --- one statistic, one definition (CLI, canned SQL, report) ------------------------------------------------------


def _markdown_rows(text: str, section: str) -> list[dict[str, str]]:
    """The first table of a report section as dicts of its cells."""
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_seed_std_bootstrap_and_top5_mean_the_same_everywhere(synthetic):
    """std over seeds is the sample std (ddof 1) in the fewshot_summary query and the report; compare and report
    resample alike by default; the metrics are unrounded (exact differences); top-5 of 4 classes is not shown."""
    canned = run_cli(["query", "--canned", "fewshot_summary", "--workdir", str(synthetic.root), "--format", "json"])
    assert canned.exit_code == 0, canned.output
    summary = {(r["method"], r["shots"]): r for r in json.loads(canned.stdout) if r["run_id"] == "fs"}
    raw = query(synthetic, "SELECT method, shots, list(value) AS v FROM metrics WHERE run_id = 'fs' AND metric = 'top1' "
                "AND class_index IS NULL AND shots IS NOT NULL GROUP BY ALL").to_pylist()  # fmt: skip
    report = run_cli(["report", "fs", "--workdir", str(synthetic.root), "-o", "-"])
    assert report.exit_code == 0, report.output
    shown = {(r["method"], int(r["shots"])): r for r in _markdown_rows(report.stdout, "Accuracy against shots")}
    assert len(raw) == len(summary) == len(shown) == 6
    for r in raw:
        std = float(np.std(r["v"], ddof=1))
        assert summary[(r["method"], r["shots"])]["top1_std"] == pytest.approx(std, abs=1e-4)
        assert float(shown[(r["method"], r["shots"])]["top1 std"]) == pytest.approx(std, abs=1e-4)

    zs = run_cli(["report", "zs", "--workdir", str(synthetic.root), "-o", "-"])
    compare_help = run_cli(["compare", "--help"])
    assert "(2000 resamples)" in zs.stdout and re.search(r"resamples.*\[default: 2000\]", compare_help.output, re.S)
    metrics = _markdown_rows(zs.stdout, "Metrics")
    assert "top5" not in metrics[0] and "Top-5 not shown: with 4 classes" in zs.stdout
    exact = query(synthetic, "SELECT method, value FROM metrics WHERE run_id = 'zs' AND metric = 'ece'").to_pylist()
    stored = query(synthetic, f"SELECT method, ece FROM ({open_sql('accuracy_per_method')}) WHERE run_id = 'zs'")
    assert {r["method"]: r["ece"] for r in stored.to_pylist()} == {r["method"]: r["value"] for r in exact}


def test_report_configuration_of_a_few_shot_run_with_an_adapter(synthetic, tmp_path):
    """A few-shot run's report shows its shots, seeds, views and adapter, not the zero-shot split and methods."""
    config = {**_config("imagenet", "ViT-S-32-alt", None), "fewshot": {
        "shots": [1, 2, 4], "seeds": [1, 2], "augment_views": 10, "methods": ["prototype", "tip_adapter"],
        "search": "grid", "train_split": "train", "val_split": "val", "test_split": "test"}}  # fmt: skip
    config["model"]["adapter"] = "adapter-0123456789abcdef"
    _write_run(synthetic, "fsa", "few-shot", config)
    done = run_cli(["report", "fsa", "--workdir", str(synthetic.root), "-o", "-"])
    assert done.exit_code == 0, done.output
    settings = {r["setting"]: r["value"] for r in _markdown_rows(done.stdout, "Configuration")}
    assert settings["shots"] == "1, 2, 4" and settings["seeds"] == "1, 2" and settings["augment views"] == "10"
    assert (
        settings["adapter"] == "adapter-0123456789abcdef" and settings["few-shot methods"] == "prototype, tip_adapter"
    )
    assert settings["splits (support / val / test)"] == "train / val / test"
    assert "methods" not in settings and "split" not in settings  # the zero-shot defaults a few-shot run carries


def test_report_as_latex_and_csv_tables_for_a_paper(synthetic, tmp_path):
    """`report --format latex|csv`: the metrics table a paper needs (percent with mean +- std over seeds in LaTeX,
    unrounded fractions in CSV), difference from clip with its interval; no top-5 for 4 classes."""
    done = run_cli(["report", "fs", "--workdir", str(synthetic.root), "--format", "latex", "-o", tmp_path / "fs.tex"])
    assert done.exit_code == 0, done.output
    tex = (tmp_path / "fs.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\end{table}" in tex
    assert re.search(r"^tip\\_adapter & 4 & \d+\.\d\d \$\\pm\$ \d+\.\d\d", tex, re.M)  # escaped, mean +- std
    assert "Top-5" not in tex
    zs = run_cli(
        ["report", "zs", "--workdir", str(synthetic.root), "--format", "latex", "-o", "-", "--resamples", "200"]
    )
    row = next(line for line in zs.stdout.splitlines() if line.startswith("coder &"))
    signed = r"([+-]\d+\.\d\d)"  # the sign is always written; its value depends on the random weights
    found = re.fullmatch(rf"coder & \d+\.\d\d & .* & {signed} & \[{signed}, {signed}\] & .* \\\\", row)
    assert found, row
    diff, low, high = (float(v) for v in found.groups())
    assert low <= diff <= high  # the difference from clip lies inside its bootstrap interval

    done = run_cli(["report", "fs", "--workdir", str(synthetic.root), "--format", "csv", "-o", tmp_path / "fs.csv"])
    assert done.exit_code == 0, done.output
    table = pacsv.read_csv(tmp_path / "fs.csv").to_pylist()
    raw = query(synthetic, "SELECT method, shots, avg(value) AS top1, stddev_samp(value) AS std FROM metrics "
                "WHERE run_id = 'fs' AND metric = 'top1' AND class_index IS NULL GROUP BY ALL").to_pylist()  # fmt: skip
    by = {(r["method"], r["shots"]): r for r in table}
    assert len(by) == len(raw) == 7  # clip zero-shot and 2 methods x 3 shots
    for r in raw:
        assert by[(r["method"], r["shots"])]["top1"] == pytest.approx(r["top1"], abs=1e-12)
        if r["shots"] is not None:
            assert by[(r["method"], r["shots"])]["top1_std"] == pytest.approx(r["std"], abs=1e-12)
    assert all(r["top5"] is None and r["run_id"] == "fs" for r in table)
