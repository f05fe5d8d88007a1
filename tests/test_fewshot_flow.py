"""The few-shot flow end to end (tiny grid) and its pure support-set helpers."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.fewshot.support import augmented_samples, average_views, plan_supports, source_key, view_key


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (24, 16), color)
    img.putpixel((0, 0), (255, 255, 255))
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_augmented_views_are_deterministic_per_key():
    samples = [{"__key__": "a", "png": _png((200, 0, 0)), "cls": b"0"}, {"__key__": "b", "jpg": b"broken"}]
    first = list(augmented_samples(iter(samples), views=3, seed=7))
    again = list(augmented_samples(iter(samples[:1]), views=3, seed=7))
    other = list(augmented_samples(iter(samples[:1]), views=3, seed=8))
    assert [s["__key__"] for s in first] == ["a_v000", "a_v001", "a_v002"]  # the broken image is skipped
    assert [s["png"] for s in first] == [s["png"] for s in again]
    assert [s["png"] for s in first] != [s["png"] for s in other]
    assert all(s["cls"] == b"0" for s in first)


def test_view_keys_and_averaging():
    assert source_key(view_key("demo-train-000001", 12)) == "demo-train-000001"
    with pytest.raises(ValueError, match="not an augmented view key"):
        source_key("plain")
    x = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]], dtype=np.float32)
    avg = average_views(["a_v000", "a_v001", "b_v000"], x)
    assert np.allclose(avg["a"], [np.sqrt(0.5), np.sqrt(0.5)])
    assert np.allclose(avg["b"], [0.6, 0.8])


def test_plan_supports_covers_every_cell():
    keys = [f"k{i}" for i in range(6)]
    labels = np.array([0, 0, 0, 1, 1, 2])
    sets, short = plan_supports(keys, labels, shots=[1, 2], seeds=[1, 2], n_classes=3, sampling="per_class")
    assert sorted(sets) == ["1-1", "1-2", "2-1", "2-2"]
    assert all(len(v) == 3 for k, v in sets.items() if k.startswith("1-"))
    assert short == {"2-1": {2: 1}, "2-2": {2: 1}}  # class 2 has one sample: all of it is used


@pytest.mark.flow
def test_fewshot_flow(prefect_server, tmp_path):
    from coderflow.config import DatasetConfig, FewShotConfig, ModelConfig, PipelineConfig, TextsConfig
    from coderflow.flows.fewshot import fewshot

    cfg = PipelineConfig(
        workdir=str(tmp_path),
        dataset=DatasetConfig(demo_images_per_class=3, samples_per_shard=16),
        model=ModelConfig(batch_size=32),
        texts=TextsConfig(types=("name", "att")),
        fewshot=FewShotConfig(shots=(1, 2), seeds=(1, 2), augment_views=2, alphas=(0.5, 1.0), betas=(1.0, 5.0)),
    )
    result = fewshot(cfg)
    layout = Layout.at(tmp_path)
    q = lambda sql: query(layout, sql).to_pylist()  # noqa: E731
    preds = q("SELECT method, shots, seed, count(*) AS n FROM predictions GROUP BY ALL ORDER BY ALL")
    assert len(preds) == 4 * 2 * 2 + 1 and {p["n"] for p in preds} == {30}
    assert [p for p in preds if p["shots"] is None] == [{"method": "clip", "shots": None, "seed": None, "n": 30}]
    zero_shot = q("SELECT value FROM metrics WHERE method = 'clip' AND shots IS NULL AND metric = 'top1'")
    assert len(zero_shot) == 1  # the zero-shot baseline, once per run
    chosen = q("SELECT method, metric, value FROM metrics WHERE metric IN ('alpha', 'beta', 'gamma') ORDER BY ALL")
    assert {c["method"] for c in chosen} == {"tip_adapter", "coder_adapter", "tip_x"}
    assert {c["value"] for c in chosen if c["metric"] == "alpha"} <= {0.5, 1.0}
    assert {c["method"] for c in chosen if c["metric"] == "gamma"} == {"tip_x"}
    init = q("SELECT count(*) AS n FROM metrics WHERE metric = 'val_accuracy_init' AND method = 'coder_adapter'")
    assert init[0]["n"] == 4  # CODER-Adapter's initial (alpha, beta) is judged on val in every cell
    assert [r["seeds"] for r in result.table] == [2] * 8
    support = q(
        "SELECT shots, seed, count(*) AS n, count(DISTINCT label) AS c FROM fewshot_support GROUP BY ALL ORDER BY ALL"
    )
    assert support == [{"shots": s, "seed": d, "n": 10 * s, "c": 10} for s in (1, 2) for d in (1, 2)]
    png = layout.run_file(result.run_id, "accuracy_vs_shots.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert _latest_artifact("few-shot-accuracy-plot") == "data:image/png;base64," + base64.b64encode(png).decode()
    report = run_cli(["report", result.run_id, "--workdir", str(tmp_path), "-o", tmp_path / "fs.md"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "fs.md").read_text()
    assert "## Accuracy against shots" in text and "| tip_adapter | 2 |" in text  # mean and spread over the seeds
    n_views = q("SELECT count(*) AS n FROM image_embeddings WHERE split LIKE 'train-aug-%'")[0]["n"]
    assert n_views == 2 * len({k for ks in _support_keys(layout, result.run_id) for k in ks})
    manifest = json.loads(layout.run_file(result.run_id, "manifest.json").read_text())
    embedded = manifest["augmented_images"]  # the augmented split's embedding, as fields, not a repr string
    assert len(embedded) == 1 and embedded[0]["rows"] == n_views and embedded[0]["errors"] == 0

    # augment_views 0: the support features are the train images' stored embeddings, no augmented split
    plain = cfg.model_copy(
        update={"fewshot": FewShotConfig(shots=(1,), seeds=(1,), augment_views=0, methods=("prototype", "tip_x"))}
    )
    run = fewshot(plain).run_id
    keys = q(f"SELECT sample_key FROM fewshot_support WHERE run_id = '{run}'")
    train = {r["sample_key"] for r in q("SELECT sample_key FROM image_embeddings WHERE split = 'train'")}
    assert len(keys) == 10 and {r["sample_key"] for r in keys} <= train


def _latest_artifact(key: str) -> str:
    """The data of the newest artifact with this key, read back from the Prefect API (what the UI shows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert found, f"no artifact {key!r}"
    return found[0].data


def _support_keys(layout: Layout, run_id: str) -> list[list[str]]:
    """Which train images were in the support pool: the augmented split's source keys."""
    rows = query(layout, "SELECT DISTINCT sample_key FROM image_embeddings WHERE split LIKE 'train-aug-%'").to_pylist()
    return [[source_key(r["sample_key"]) for r in rows]]
