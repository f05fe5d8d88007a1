"""The Prefect UI shows a demo pipeline run, its tags and its metrics artifact (headless Chromium over DevTools)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import CHROMIUM, Chromium
from conftest import tiny_demo_config

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots are kept here (gitignored)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.flow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install chromium"),
]


@pytest.fixture(scope="module")
def ui_demo_run(prefect_cli_server, tmp_path_factory) -> dict[str, Any]:
    """The tiny demo pipeline, run by `coderflow run` against the shared server; its pipeline and classify runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowRunFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("ui-demo")
    config = tiny_demo_config(tmp / "work")
    workdir = config.pop("workdir")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "coderflow.cli", "run", "-c", str(tmp / "tiny.yaml"), "--workdir", workdir]
    done = subprocess.run(cmd, env=prefect_cli_server.env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"coderflow run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    with temporary_settings({PREFECT_API_URL: prefect_cli_server.api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name={"any_": ["pipeline"]}))
        mine = [r for r in runs if (r.parameters.get("config") or {}).get("workdir") == workdir]
        assert len(mine) == 1, f"expected one pipeline run with workdir {workdir}, found {len(mine)}"
        pipeline = mine[0]
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [pipeline.id]}))
        classify = next(c for c in children if client.read_flow(c.flow_id).name == "classify")
    return {"pipeline": pipeline, "classify": classify, "url": prefect_cli_server.url}


@pytest.fixture
def browser(tmp_path: Path):
    chromium = Chromium(tmp_path / "profile")
    yield chromium
    chromium.close()


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG screenshot"


def test_ui_shows_the_run_and_its_metrics_artifact(ui_demo_run, browser: Chromium):
    url, pipeline, classify = ui_demo_run["url"], ui_demo_run["pipeline"], ui_demo_run["classify"]
    name = "demo/test ViT-S-32-alt [clip]"
    assert pipeline.name == classify.name == name

    # the pipeline run: its name, state and tags
    browser.open(f"{url}/runs/flow-run/{pipeline.id}")
    browser.wait_for_text(name, "Completed", "dataset:demo", "model:ViT-S-32-alt", "Subflow Runs")
    browser.click_text("Subflow Runs")  # the stages, each named after its dataset and model
    browser.wait_for_text("ingest-dataset", "embed-images", "text-bank", "build-coder", "classify", "demo/test")
    _assert_png(browser.screenshot(ARTIFACTS / "ui-pipeline-run.png"))

    # its classify sub-flow run lists the report artifacts
    browser.open(f"{url}/runs/flow-run/{classify.id}")
    browser.wait_for_text(name, "Completed", "Parent Run", "Task runs")
    browser.click_text("Artifacts")
    browser.wait_for_text("metrics-demo", "confused-pairs-demo", "outputs-demo")
    _assert_png(browser.screenshot(ARTIFACTS / "ui-classify-artifacts.png"))

    # the metrics artifact is a table with one row per method
    browser.click_text("metrics-demo")
    text = browser.wait_for_text("Accuracy per method", "top1", "mean_per_class_recall", "n_samples", "clip")
    assert "20" in text  # n_samples
    _assert_png(browser.screenshot(ARTIFACTS / "ui-metrics-artifact.png"))


def test_ui_shows_the_few_shot_plot(prefect_cli_server, tmp_path: Path, browser: Chromium):
    """A few-shot run's accuracy-vs-shots plot is an image artifact the UI draws (not a path to a local file)."""
    config = tiny_demo_config(tmp_path / "work")
    workdir = config.pop("workdir")
    config["dataset"]["demo_images_per_class"] = 3
    config["fewshot"] = {"shots": [1, 2], "seeds": [1], "augment_views": 1, "search": "fixed"}
    (tmp_path / "fewshot.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "coderflow.cli", "fewshot", "-c", str(tmp_path / "fewshot.yaml")]
    done = subprocess.run(
        [*cmd, "--workdir", workdir], env=prefect_cli_server.env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"coderflow fewshot failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_cli_server.api_url}), get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["few-shot-accuracy-plot"]))
        )
    assert len(found) == 1 and found[0].type == "image"
    browser.open(f"{prefect_cli_server.url}/artifacts/artifact/{found[0].id}")
    browser.wait_for_text("few-shot-accuracy-plot")
    deadline = time.monotonic() + 60
    drawn = 0
    while time.monotonic() < deadline and not drawn:  # an <img> whose PNG data URL was decoded and drawn
        drawn = browser.evaluate(
            "Math.max(0, ...[...document.images].filter(i => i.src.startsWith('data:image/png')).map(i => i.naturalWidth))"
        )
        time.sleep(0.3)
    assert drawn >= 300, "the UI did not draw the accuracy-vs-shots image"
    _assert_png(browser.screenshot(ARTIFACTS / "ui-few-shot-plot.png"))
