"""IMO adapters through the real flows: training (resumable), adapted embeddings, overlap metrics in SQL."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from cli_runner import run_cli

from coderflow.config import AdapterConfig, DatasetConfig, FewShotConfig, ModelConfig, PipelineConfig, TextsConfig
from coderflow.storage.db import query
from coderflow.storage.layout import Layout, text_model_id
from coderflow.tasks.adapter.data import ShardBatches
from coderflow.tasks.embed.model import configured_model_id, load_model
from coderflow.tasks.fewshot.methods import IMO_ALPHAS

pytestmark = pytest.mark.flow


def _config(workdir, **adapter) -> PipelineConfig:
    return PipelineConfig(
        workdir=str(workdir),
        dataset=DatasetConfig(demo_images_per_class=2, samples_per_shard=8),
        model=ModelConfig(batch_size=32),
        texts=TextsConfig(types=("name",)),
        adapter=AdapterConfig(epochs=2, batch_size=8, **adapter),
    )


def test_shard_batches_reshuffle_per_epoch(tmp_path):
    from coderflow.storage.shards import write_split
    from coderflow.tasks.ingest.sources import demo_source

    src = demo_source(2, 32, split="train")
    shards = write_split(src.samples, tmp_path / "s", "t-%06d.tar", 7, {})
    batches = ShardBatches(shards, lambda img: torch.tensor(list(img.getpixel((0, 0))), dtype=torch.float32), 6, 10)
    first = [labels.tolist() for _, labels in batches]
    second = [labels.tolist() for _, labels in batches]
    flat = [sorted(itertools.chain.from_iterable(epoch)) for epoch in (first, second)]
    assert flat[0] == flat[1] == sorted(list(range(10)) * 2)
    assert first != second  # epoch 2 is shuffled differently
    assert batches.seen == 40 and batches.skipped == 0


def test_train_resume_embed_and_overlap(prefect_server, tmp_path):
    from coderflow.flows.adapter import adapter_overlap, adapter_train
    from coderflow.flows.pipeline import embed_images, text_bank

    cfg = _config(tmp_path)
    state = adapter_train(cfg, return_state=True)
    first = state.result()
    name, tags, _ = _named(state.state_details.flow_run_id)  # the Prefect UI says what each run works on
    assert name == "train-adapter demo/train ViT-S-32-alt" and {"dataset:demo", "model:ViT-S-32-alt"} <= tags
    assert first.epoch_losses[1] < first.epoch_losses[0]  # the training loss goes down
    layout = Layout.at(tmp_path)
    train_dir = next((layout.root / "adapters" / "ViT-S-32-alt__random" / "training").iterdir())
    assert sorted(p.name for p in train_dir.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]

    # a training killed after epoch 1 resumes there and ends with the same weights
    (train_dir / "epoch-0002.pt").unlink()
    (layout.root / "adapters" / "ViT-S-32-alt__random" / f"{first.adapter_id}.pt").unlink()
    resumed = adapter_train(cfg)
    assert resumed.steps == first.steps // 2
    assert resumed.adapter_id == first.adapter_id

    adapted = cfg.model.model_copy(update={"adapter": first.adapter_id})
    mid = configured_model_id(adapted, str(tmp_path))
    assert mid == f"ViT-S-32-alt__random__{first.adapter_id}" and text_model_id(mid) == "ViT-S-32-alt__random"
    lm = load_model("ViT-S-32-alt", adapter=layout.adapter_file("ViT-S-32-alt__random", first.adapter_id))
    base = load_model("ViT-S-32-alt")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(lm.model.encode_image(x), base.model.encode_image(x), atol=1e-4)
        assert torch.equal(
            lm.model.encode_text(base.tokenizer(["a cat"])), base.model.encode_text(base.tokenizer(["a cat"]))
        )

    test_ds = cfg.dataset.model_copy(update={"split": "test"})
    state = adapter_overlap(cfg.model_copy(update={"model": adapted, "dataset": test_ds}), return_state=True)
    overlap = state.result()
    name, tags, task_runs = _named(state.state_details.flow_run_id)
    assert name == f"adapter-overlap demo/test ViT-S-32-alt+{first.adapter_id}"
    assert {"dataset:demo", "model:ViT-S-32-alt", f"adapter:{first.adapter_id}"} <= tags
    assert {f"measure-overlap {m}" for m in overlap.models.values()} <= task_runs
    rows = query(layout, "SELECT model_id, value FROM metrics WHERE method = 'overlap' AND metric = 'overlap'")
    assert sorted(r["model_id"] for r in rows.to_pylist()) == sorted(overlap.models.values())
    assert all(0 <= r["value"] <= 1 for r in rows.to_pylist())

    # the adapted model's texts are the original text encoder's: nothing is embedded again
    embed_images(test_ds, adapted, str(tmp_path))
    bank = text_bank(test_ds, cfg.model, cfg.texts, str(tmp_path))
    again = text_bank(test_ds, adapted, cfg.texts, str(tmp_path))
    assert again.embedded == 0 and again.textbank_id == bank.textbank_id
    effect = query(layout, "SELECT count(DISTINCT model_id) AS n FROM (" + _sql("adapter_effect") + ")")
    assert effect.to_pylist() == [{"n": 2}]

    # few-shot with the adapter: every cache method also runs on adapted features, the zero-shot term stays the
    # original model's (IMO run.py:255-420): with alpha = gamma = 0 the adapted variants predict exactly as the others
    from coderflow.flows.fewshot import fewshot

    fs = FewShotConfig(shots=(1,), seeds=(1,), augment_views=0, search="fixed", alpha=0.0, gamma=0.0)
    result = fewshot(cfg.model_copy(update={"model": adapted, "fewshot": fs}))
    run = result.run_id
    name, tags, task_runs = _named(result.flow_run_id)
    assert name == f"few-shot demo ViT-S-32-alt+{first.adapter_id} 1-shot" and "dataset:demo" in tags
    assert "few-shot-predict 1-shot seed 1" in task_runs
    preds = query(
        layout, f"SELECT method, list(pred ORDER BY sample_key) AS p FROM predictions WHERE run_id = '{run}' GROUP BY 1"
    )
    by = {r["method"]: r["p"] for r in preds.to_pylist()}
    for method in ("tip_adapter", "coder_adapter", "tip_x"):
        assert by[method.replace("tip_adapter", "tip_adapter_imo")] == by[f"{method}_adapted"], method
    assert set(by) == {"clip", "prototype", "tip_adapter_imo", "coder_adapter", "tip_x"} | {
        f"{m}_adapted" for m in ("tip_adapter", "coder_adapter", "tip_x")
    }  # clip: the zero-shot baseline; Tip-Adapter on IMO's grid says so in its name
    # searched: with an adapter both Tip-Adapter variants use IMO's grid (run.py:42-47)
    grid = fs.model_copy(update={"search": "grid"})
    searched = fewshot(cfg.model_copy(update={"model": adapted, "fewshot": grid})).run_id
    sql = f"SELECT method, value FROM metrics WHERE run_id = '{searched}' AND metric = 'alpha' AND method LIKE 'tip_a%'"
    alphas = {r["method"]: r["value"] for r in query(layout, sql).to_pylist()}
    assert set(alphas) == {"tip_adapter_imo", "tip_adapter_adapted"}
    assert all(any(abs(a - g) < 1e-9 for g in IMO_ALPHAS) for a in alphas.values())
    # adapter_effect: adapted results next to the adapted encoder's overlap, the others next to the original's
    done = run_cli(["query", "--canned", "adapter_effect", "--workdir", str(tmp_path), "--format", "json"])
    assert done.exit_code == 0, done.output
    effect = {(r["model_id"], r["method"]) for r in json.loads(done.stdout) if r["method"]}
    base = text_model_id(mid)
    assert {(mid, f"{m}_adapted") for m in ("tip_adapter", "coder_adapter", "tip_x")} <= effect
    assert {(base, m) for m in ("prototype", "tip_adapter_imo", "coder_adapter", "tip_x")} <= effect
    assert not {m for model, m in effect if model == base and m.endswith("_adapted")}
    assert not {m for model, m in effect if model == mid and not m.endswith("_adapted")}


def _named(flow_run_id) -> tuple[str, set[str], set[str]]:
    """A flow run's name, tags and the names of its task runs, read back from the Prefect API (what the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
    return run.name, set(run.tags), {t.name for t in task_runs}


def _sql(name: str) -> str:
    from coderflow.storage.db import sql_file

    return sql_file(name).rstrip().rstrip(";")
