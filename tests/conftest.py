"""Shared fixtures: a real Prefect test server (once per session), small demo runs and dataset builders."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

import coderflow  # noqa: F401  (sets the offline Prefect settings before prefect is imported)

os.environ.setdefault("COLUMNS", "200")  # the CLI's tables and messages unwrapped in captured output


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server with a temporary database, shared by every flow test."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.testing.utilities import prefect_test_harness

    # Prefect's console handler binds to sys.stderr when logging is first set up: do it now, not inside a CliRunner
    # invocation whose captured stream is closed afterwards (later log lines would then fail with "Logging error")
    ensure_logging_setup()
    with prefect_test_harness(server_startup_timeout=120):
        yield


def png_bytes(color: tuple[int, int, int], size: int = 32, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), color if mode == "RGB" else color[0]).save(buf, format="PNG")
    return buf.getvalue()


def good_png(k: int) -> bytes:
    """A valid 16x16 PNG whose colour follows k."""
    return png_bytes((k * 37 % 255, 90, 30), 16)


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A WebDataset tar holding `samples` at `path` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An image folder with 3 classes x 4 images, one of them corrupt."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ["red_apple", "green_leaf", "blue_sky"]:
        d = root / name
        d.mkdir(parents=True)
        for i in range(4):
            color = tuple(int(v) for v in rng.integers(0, 255, 3))
            (d / f"{i}.png").write_bytes(png_bytes(color))
    (root / "blue_sky" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def write_clip_benchmark(root: Path, n_shards: int = 2, per_shard: int = 3, classes=("cat", "dog")) -> Path:
    """A dataset in CLIP_benchmark's WebDataset layout: <root>/test/N.tar + nshards.txt + class/template files."""
    (root / "test").mkdir(parents=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(root / "test" / f"{s}.tar")) as w:
            for _ in range(per_shard):
                w.write({"__key__": f"s{k:07d}", "webp": png_bytes((k * 20 % 255, 90, 30)), "cls": k % len(classes)})
                k += 1
    (root / "test" / "nshards.txt").write_text(f"{n_shards}\n")
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na blurry photo of a {c}.\n")
    return root


@pytest.fixture
def clip_benchmark_dir(tmp_path: Path) -> Path:
    return write_clip_benchmark(tmp_path / "cb")


@pytest.fixture(scope="session")
def demo_run(prefect_server, tmp_path_factory):
    """One small end-to-end demo pipeline run, shared by the tests that inspect its outputs."""
    from coderflow.config import DatasetConfig, ModelConfig, PipelineConfig
    from coderflow.flows.pipeline import pipeline

    workdir = tmp_path_factory.mktemp("demo")
    cfg = PipelineConfig(
        workdir=str(workdir),
        dataset=DatasetConfig(demo_images_per_class=3, samples_per_shard=12),
        model=ModelConfig(batch_size=16),
    )
    result = pipeline(cfg)
    return {"workdir": workdir, "result": result, "config": cfg}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# --- a real `prefect server start` subprocess, shared by tests/test_deployments.py and tests/test_ui.py ---


@pytest.fixture(scope="session")
def prefect_cli_server(tmp_path_factory):
    """`prefect server start` (SQLite in a temporary PREFECT_HOME, offline, scheduler on), stopped after the session."""
    from prefect_server import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


def tiny_demo_config(workdir: Path) -> dict:
    """The smallest useful demo pipeline: 2 images per class, class-name texts only, zero-shot CLIP."""
    return {
        "workdir": str(workdir),
        "dataset": {"name": "demo", "kind": "demo", "demo_images_per_class": 2, "samples_per_shard": 10},
        "model": {"name": "ViT-S-32-alt", "pretrained": None, "batch_size": 16},
        "texts": {"types": ["name"]},
        "methods": ["clip"],
    }
