"""Run reports (pure formatting) and run names/tags: what the Prefect UI shows about a run."""

from __future__ import annotations

from pathlib import Path

from coderflow.config import DatasetConfig, ModelConfig, PipelineConfig
from coderflow.flows.naming import describe_run, run_tags
from coderflow.storage.db import sql_file
from coderflow.tasks.report.tables import (
    artifact_key,
    markdown_table,
    outputs_markdown,
    select_columns,
)


def test_artifact_keys_are_lowercase_dashes():
    assert artifact_key("metrics", "My Photos_2024/v1") == "metrics-my-photos-2024-v1"
    assert artifact_key("--") == "coderflow"


def test_a_canned_question_for_one_run_binds_the_run_id(demo_run):
    """Values reach SQL only as bound parameters: a quote in a run id is just a character."""
    from coderflow.storage.db import query
    from coderflow.storage.layout import Layout

    layout = Layout.at(demo_run["workdir"])
    assert query(layout, sql_file("confused_pairs"), {"run_id": "r'1"}, "q.method", 3).num_rows == 0
    mine = query(layout, sql_file("confused_pairs"), {"run_id": demo_run["result"].run_id}, "q.method, q.n DESC", 3)
    assert 0 < mine.num_rows <= 3 and set(mine["run_id"].to_pylist()) == {demo_run["result"].run_id}


def test_tables_round_and_escape():
    rows = select_columns([{"method": "a|b", "top1": 0.123456, "extra": 1}], ["method", "top1", "n"])
    assert rows == [{"method": "a|b", "top1": 0.1235, "n": None}]
    assert markdown_table(rows, ["method", "top1", "n"]).splitlines() == [
        "| method | top1 | n |", "|---|---|---|", "| a\\|b | 0.1235 |  |",
    ]  # fmt: skip
    text = outputs_markdown("r1", {"metrics": Path("/w/runs/r1/metrics.parquet")})
    assert "[`/w/runs/r1/metrics.parquet`](file:///w/runs/r1/metrics.parquet)" in text


def test_run_names_and_tags_from_models_or_their_json():
    cfg = PipelineConfig(dataset=DatasetConfig(name="pets", split="val"), model=ModelConfig(name="ViT-B-32",
                         pretrained="openai"), methods=("clip", "coder"))  # fmt: skip
    for params in ({"config": cfg}, {"config": cfg.model_dump(mode="json")}):
        assert describe_run(params, with_methods=True) == "pets/val ViT-B-32:openai [clip,coder]"
        assert run_tags(params) == ["dataset:pets", "model:ViT-B-32"]
    stage = {"dataset": cfg.dataset, "model": cfg.model, "workdir": None}
    assert describe_run(stage) == "pets/val ViT-B-32:openai" and describe_run(stage, with_model=False) == "pets/val"
