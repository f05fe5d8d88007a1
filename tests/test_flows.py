"""End to end through real Prefect flows (test-harness server): the demo pipeline, re-runs, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

from coderflow.storage.db import SQL_DIR, query
from coderflow.storage.db import sql_file as db_sql
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import read_table

pytestmark = pytest.mark.flow


def test_demo_pipeline_outputs(demo_run):
    layout = Layout.at(demo_run["workdir"])
    q = lambda sql: query(layout, sql).to_pylist()  # noqa: E731
    assert q("SELECT count(*) AS n, count(DISTINCT shard) AS s FROM image_embeddings") == [{"n": 30, "s": 3}]
    assert q("SELECT count(*) AS n FROM image_embeddings WHERE status <> 'ok'") == [{"n": 0}]
    n_texts = q("SELECT count(*) AS n FROM texts WHERE text_type = 'template'")[0]["n"]
    assert n_texts == 10 * 80  # demo classes x default templates (CLIP's 80 ImageNet templates)
    names = q("SELECT text FROM texts WHERE text_type = 'name' AND source = 'name-template' ORDER BY class_index")
    assert [r["text"] for r in names][:2] == ["a photo of circle", "a photo of square"]  # CODER's one name prompt
    n_all = q("SELECT count(*) AS n FROM texts")[0]["n"]
    assert q("SELECT count(*) AS n FROM texts JOIN text_embeddings USING (text_id)")[0]["n"] == n_all
    # no text embedded twice: the embedding stage reused what building the bank embedded (class prompts for the
    # one-vs-one pairs and the look-alike filter), and each text id has one embedding
    texts = demo_run["result"].texts
    assert texts.embedded < texts.n_texts
    assert q("SELECT count(*) - count(DISTINCT text_id) AS d FROM text_embeddings") == [{"d": 0}]
    preds = q("SELECT method, count(*) AS n, min(len(top5)) AS k FROM predictions GROUP BY method ORDER BY method")
    methods = ["clip", "coder", "coder_rerank", "dclip", "waffle"]  # cupl: left out, the bank has no CuPL sentence
    assert preds == [{"method": m, "n": 30, "k": 5} for m in methods]
    sql = "SELECT metric, value FROM metrics WHERE class_index IS NULL AND method = 'clip'"
    metrics = {r["metric"]: r["value"] for r in q(sql)}
    assert set(metrics) == {"top1", "top5", "mean_per_class_recall", "n_samples", "ece"}
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and metrics["n_samples"] == 30 and 0 <= metrics["ece"] <= 1
    assert q("SELECT count(*) AS n FROM metrics WHERE metric = 'recall'") == [{"n": 10 * len(methods)}]
    # the generated texts are there, and CODER vectors cover every image with one cosine per text of the bank
    types = {r["text_type"] for r in q("SELECT DISTINCT text_type FROM texts")}
    assert types == {"name", "template", "att", "ana", "syno", "ovo"}
    coder = q(
        "SELECT count(*) AS n, min(len(c.vector)) AS lo, max(len(c.vector)) AS hi, any_value(b.m) AS m "
        "FROM coder c JOIN (SELECT textbank_id, count(*) AS m FROM texts GROUP BY 1) b USING (textbank_id)"
    )[0]
    assert coder["n"] == 30 and coder["lo"] == coder["hi"] == coder["m"]
    run = q("SELECT run_id, status, model_id, versions, config FROM runs")
    assert len(run) == 1 and run[0]["status"] == "completed" and run[0]["model_id"] == "ViT-S-32-alt__random"
    assert json.loads(run[0]["versions"])["open_clip_torch"]
    manifest = json.loads(layout.run_file(run[0]["run_id"], "manifest.json").read_text())
    assert manifest["config"]["dataset"]["kind"] == "demo" and manifest["textbank_id"]
    assert manifest["preprocess"]["size"] == [224, 224]
    for sql in sorted(SQL_DIR.glob("*.sql")):
        result = run_cli(["query", "--canned", sql.stem, "--workdir", str(layout.root), "--format", "json"])
        assert result.exit_code == 0, result.output
    # CODER*: how many samples were re-ranked and changed is stored next to its accuracy
    counts = q("SELECT metric, value FROM metrics WHERE method = 'coder_rerank' AND metric LIKE 'n_%' ORDER BY 1")
    assert [c["metric"] for c in counts] == ["n_changed", "n_reranked", "n_samples"]
    assert counts[0]["value"] <= counts[1]["value"] <= 30
    # the one-vs-one pairs are those CODER* consults, and the share of consulted pairs with ovo texts is stored
    bank_id = manifest["textbank_id"]
    bank_report = json.loads(layout.textbank_report(bank_id).read_text())
    assert bank_report["pairs_from"] == "consulted"
    summary = bank_report["summary"]  # per type: kept rows, classes covered, drops by reason (also an artifact)
    assert summary["types"]["name"] == {
        "kept": 10,
        "classes": 10,
        "dropped": {},
        "requests": 0,
        "requested": 0,
        "received": 0,
        "tokens": 0,
    }
    assert (
        sum(summary["per_class"]["circle"].values())
        == q(f"SELECT count(*) AS n FROM texts WHERE textbank_id = '{bank_id}' AND class_name = 'circle'")[0]["n"]
    )
    assert set(summary["classes_without"]) == {"att", "ana"}
    cover = {r["metric"]: r["value"] for r in q("SELECT metric, value FROM metrics WHERE metric LIKE 'ovo_%'")}
    assert cover["ovo_pairs_covered"] <= cover["ovo_pairs_consulted"]
    assert cover["ovo_coverage"] == pytest.approx(cover["ovo_pairs_covered"] / cover["ovo_pairs_consulted"])
    changes = q("SELECT * FROM (" + db_sql("rerank_changes").rstrip().rstrip(";") + ")")[0]
    assert changes["changed"] == counts[0]["value"]
    assert changes["fixed"] + changes["broken"] + changes["wrong_to_wrong"] == changes["changed"]


def test_rerun_reuses_shards_and_texts(demo_run):
    from coderflow.flows.pipeline import pipeline

    layout = Layout.at(demo_run["workdir"])
    parts = sorted(layout.root.glob("embeddings/image/*/*/*/*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    result = pipeline(demo_run["config"])
    assert result.images.shards_skipped == 3
    assert result.coder.shards_skipped == 3
    assert result.texts.embedded == 0
    assert result.texts.reused is True  # the bank's inputs did not change: nothing was generated
    assert [p.stat().st_mtime_ns for p in parts] == mtimes
    rows = query(layout, "SELECT count(*) AS n, count(DISTINCT run_id) AS r FROM predictions WHERE method = 'clip'")
    assert rows.to_pylist() == [{"n": 60, "r": 2}]  # one new run; embeddings not duplicated
    assert query(layout, "SELECT count(*) AS n FROM image_embeddings").to_pylist() == [{"n": 30}]


def test_run_on_image_folder_records_bad_images(prefect_server, image_folder: Path, tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"dataset:\n  name: colors\n  source: {image_folder}\n  samples_per_shard: 5\n"
        "model:\n  batch_size: 8\nmax_failure_rate: 0.5\nmethods: [clip]\ntexts:\n  types: [name, att]\n"
    )
    result = run_cli(["run", "-c", str(config), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output
    layout = Layout.at(tmp_path / "w")
    rows = query(layout, "SELECT status, count(*) AS n FROM image_embeddings GROUP BY status ORDER BY status")
    assert rows.to_pylist() == [{"status": "error", "n": 1}, {"status": "ok", "n": 12}]
    assert query(layout, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 12}]


def test_clip_benchmark_run_uses_its_templates(prefect_server, clip_benchmark_dir: Path, tmp_path: Path):
    workdir = tmp_path / "w"
    args = ["--workdir", str(workdir), "--dataset.name", "cb", "--source", str(clip_benchmark_dir), "--kind", "wds"]
    assert run_cli(["ingest", *args]).exit_code == 0
    for stage in (
        ["embed"],
        ["texts", "--texts.types", "name"],
        ["coder", "--coder.format", "sparse", "--coder.top-k", "3"],
    ):
        out = run_cli([*stage, "--workdir", str(workdir), "--dataset.name", "cb"])
        assert out.exit_code == 0, out.output
    out = run_cli(["classify", "--workdir", str(workdir), "--dataset.name", "cb", "--methods", "clip,coder"])
    assert out.exit_code == 0, out.output
    sparse = query(Layout.at(workdir), "SELECT len(indices) AS k, vector IS NULL AS dense_null FROM coder").to_pylist()
    assert sparse == [{"k": 3, "dense_null": True}] * 6
    sql = "SELECT text FROM texts WHERE source = 'template' ORDER BY class_index, text"
    texts = query(Layout.at(workdir), sql).to_pylist()
    assert [t["text"] for t in texts] == [
        "a blurry photo of a cat.", "a photo of a cat.", "a blurry photo of a dog.", "a photo of a dog.",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--source", "/no/such/folder", "--kind", "folder"], "not found"),
        (["run", "--model.name", "ViT-Nope"], "unknown open_clip model"),
        (["run", "--methods", "clip,nope"], "(got 'nope')"),
        (["query", "DROP VIEW metrics"], "DROP statements are refused"),
        (["query", "SELECT * FROM nowhere"], "nowhere"),
        (["query", "--file", "/no/such.sql"], "not found"),
        (["ingest", "--source", "/no/such/folder", "--kind", "folder"], "not found"),
        (["classify", "--dataset.name", "never-ingested"], "not ingested"),
        (["texts", "--dataset.name", "never-ingested"], "not ingested"),
    ],
)
def test_cli_errors_are_one_line(prefect_server, tmp_path: Path, args, message):
    if args[0] == "query":
        (tmp_path / "w" / "runs").mkdir(parents=True)  # a work directory with no results yet
    result = run_cli([*args, "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_query_refuses_a_folder_that_is_not_a_work_directory(tmp_path: Path):
    result = run_cli(["query", "SELECT 1", "--workdir", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "is not a coderflow work directory" in result.output
    assert not (tmp_path / "nothing").exists()


def test_config_errors_name_the_key(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  nmae: x\nmodel:\n  batch_size: many\n")
    result = run_cli(["run", "-c", str(bad)])
    assert result.exit_code == 2
    assert "dataset.nmae: unknown key" in result.output and "model.batch_size" in result.output


def test_classify_in_chunks_gives_the_same_predictions(demo_run):
    """Chunking images (bounded memory) changes nothing in the predictions or the re-rank counters."""
    from prefect.logging import disable_run_logger

    from coderflow.tasks.classify.task import classify_zero_shot

    layout = Layout.at(demo_run["workdir"])
    run = query(layout, "SELECT model_id, textbank_id FROM runs LIMIT 1").to_pylist()[0]
    methods = ["clip", "coder", "coder_rerank"]
    with disable_run_logger():
        outs = {
            n: classify_zero_shot.fn(f"chunk{n}", "demo", "test", run["model_id"], run["textbank_id"], methods,
                                     str(layout.root), chunk_size=n)
            for n in (7, 4096)
        }  # fmt: skip
    assert outs[7].methods == outs[4096].methods
    cols = ["method", "sample_key", "pred", "top5", "margin"]
    tables = {n: read_table(layout.run_file(f"chunk{n}", "predictions.parquet")).select(cols) for n in outs}
    rows = {n: sorted(t.to_pylist(), key=lambda r: (r["method"], r["sample_key"])) for n, t in tables.items()}
    assert len(rows[7]) == 3 * 30
    exact = [{k: v for k, v in r.items() if k != "margin"} for r in rows[7]]
    assert exact == [{k: v for k, v in r.items() if k != "margin"} for r in rows[4096]]
    # matrix products over other batch sizes round differently in the last bits
    assert [r["margin"] for r in rows[7]] == pytest.approx([r["margin"] for r in rows[4096]], abs=1e-5)


def test_waffle_reps_are_seeded_runs_with_their_mean(demo_run, tmp_path):
    """WaffleCLIP base_main.py --reps: each rep draws new descriptors (seed waffle_seed + r); accuracies per rep and
    their mean and spread."""
    import shutil

    from coderflow.config import ClassifyConfig
    from coderflow.flows.pipeline import classify

    work = tmp_path / "w"
    shutil.copytree(demo_run["workdir"], work)
    cfg = demo_run["config"]
    bank = json.loads(next((work / "runs").glob("*/manifest.json")).read_text())["textbank_id"]
    settings = ClassifyConfig(waffle_reps=3, waffle_seed=4)
    run = classify(cfg.dataset, cfg.model, bank, ["waffle"], workdir=str(work), classify=settings).run_id
    q = lambda sql: query(Layout.at(work), sql).to_pylist()  # noqa: E731
    per_rep = q(f"SELECT seed, value FROM metrics WHERE run_id = '{run}' AND metric = 'top1' ORDER BY seed")
    assert [r["seed"] for r in per_rep] == [4, 5, 6]
    mean = q(f"SELECT metric, value FROM metrics WHERE run_id = '{run}' AND metric LIKE 'top1_%' ORDER BY 1")
    assert mean[0]["value"] == pytest.approx(np.mean([r["value"] for r in per_rep]))
    assert mean[1]["value"] == pytest.approx(np.std([r["value"] for r in per_rep], ddof=1))  # over seeds: ddof 1
    banks = q("SELECT count(DISTINCT textbank_id) AS n FROM texts WHERE source LIKE 'waffle:seed=%'")
    assert banks[0]["n"] >= 3


def test_module_loggers_reach_the_run_logs(prefect_server):
    """Warnings of pure modules (the LLM generator's, say) use `logging.getLogger(__name__)`; they show in the run's
    logs in the Prefect UI (coderflow sets PREFECT_LOGGING_EXTRA_LOGGERS=coderflow)."""
    import logging
    import time

    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    @task
    def warn() -> None:
        logging.getLogger("coderflow.tasks.texts.llm").warning("LLM gave nothing for att 'x': empty reply")

    @flow
    def run_it() -> None:
        warn()

    run_id = run_it(return_state=True).state_details.flow_run_id
    messages: list[str] = []
    for _ in range(20):  # logs are shipped in the background
        with get_client(sync_client=True) as client:
            messages = [x.message for x in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
        if any("LLM gave nothing" in m for m in messages):
            break
        time.sleep(0.5)
    assert any("LLM gave nothing for att 'x'" in m for m in messages), messages


@pytest.mark.flow
def test_text_bank_runs_while_images_are_embedded(prefect_server, tmp_path: Path, monkeypatch):
    """Without one-vs-one pairs from the images, the text bank and the image embedding run at the same time (two
    sub-flows of the pipeline under its one work-directory lock): here the embedding waits until the bank has
    started, which only ends if they run concurrently; with pairs from the images (the default) the images come
    first."""
    import threading

    from conftest import tiny_demo_config

    from coderflow.config import PipelineConfig
    from coderflow.flows import pipeline as p

    cfg = PipelineConfig(**tiny_demo_config(tmp_path))
    assert not p.bank_reads_images(cfg) and p.bank_reads_images(PipelineConfig())
    bank_started = threading.Event()
    real_bank, real_embed = p.text_bank, p.embed_images

    def bank(*args, **kwargs):
        bank_started.set()
        return real_bank(*args, **kwargs)

    def embed(*args, **kwargs):
        assert bank_started.wait(120), "the text bank did not start while the images were being embedded"
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(p, "text_bank", bank)
    monkeypatch.setattr(p, "embed_images", embed)
    result = p.pipeline(cfg)
    assert result.images.rows == 20 and result.texts.n_texts > 0


@pytest.mark.flow
def test_sparse_coder_is_not_taken_for_the_dense_one(demo_run, tmp_path: Path):
    """Dense and sparse CODER files of a shard are two files (the format is in the name and the `format` column)."""
    import shutil

    from coderflow.config import CoderConfig
    from coderflow.flows.pipeline import build_coder

    work = tmp_path / "w"
    shutil.copytree(demo_run["workdir"], work)
    cfg, bank = demo_run["config"], demo_run["result"].texts.textbank_id
    again = build_coder(cfg.dataset, cfg.model, bank, CoderConfig(), str(work))
    assert again.shards_skipped == again.shards == 3  # dense: already there
    sparse = build_coder(cfg.dataset, cfg.model, bank, CoderConfig(format="sparse", top_k=4), str(work))
    assert sparse.shards_skipped == 0 and sparse.rows == 30
    rows = query(Layout.at(work), "SELECT format, count(*) AS n FROM coder GROUP BY format ORDER BY format")
    assert rows.to_pylist() == [{"format": "dense", "n": 30}, {"format": "top4", "n": 30}]


@pytest.mark.flow
def test_a_run_name_with_quotes_and_slashes_is_just_a_name(prefect_server, tmp_path: Path):
    import yaml
    from conftest import tiny_demo_config

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_demo_config(tmp_path / "w")))
    args = ["run", "-c", str(config), "--run-name", "it's ../../mine"]
    first = run_cli(args)
    assert first.exit_code == 0, first.output
    note = " ".join(first.output.split())  # random weights: the note suggests a model that has published weights
    assert "RANDOM weights" in note and "--model.name ViT-B-32 --pretrained openai" in note
    runs = sorted(p.name for p in (tmp_path / "w" / "runs").iterdir())
    assert len(runs) == 1 and "mine" in runs[0] and "'" not in runs[0]  # one folder right under runs/
    again = run_cli(args)  # the up-to-date check reads that run back
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    forced = run_cli([*args, "--force"])  # every stored shard is reused: its stage says so, not "0 images/s"
    assert forced.exit_code == 0, forced.output
    assert re.search(r"embed \S+: \d+ of \d+ shards in [\d.]+ s \(cached\)", forced.output), forced.output
    assert "0 images, 0.0 images/s" not in forced.output
