"""Ingest sources: the demo, image folders (and their errors), CLIP_benchmark shards locally and over HTTP."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from coderflow.storage.shards import image_entry, sample_label
from coderflow.tasks.ingest.sources import DEMO_CLASSES, demo_source, folder_source, wds_shard_urls, wds_source


def test_demo_is_deterministic_and_balanced():
    a = list(demo_source(2, 32, seed=1).samples)
    b = list(demo_source(2, 32, seed=1).samples)
    c = list(demo_source(2, 32, seed=2).samples)
    assert len(a) == 2 * len(DEMO_CLASSES)
    assert [s["png"] for s in a] == [s["png"] for s in b]
    assert [s["png"] for s in a] != [s["png"] for s in c]
    assert sorted(s["cls"] for s in a) == sorted(list(range(len(DEMO_CLASSES))) * 2)


def test_folder_source(image_folder: Path):
    src = folder_source(image_folder)
    assert src.classnames == ["blue sky", "green leaf", "red apple"]
    samples = list(src.samples)
    assert len(samples) == 13
    assert len({s["__key__"] for s in samples}) == 13
    broken = [s for s in samples if s["json"]["path"].endswith("broken.jpg")]
    assert broken[0]["cls"] == 0 and image_entry(broken[0])[0] == "jpg"


def test_folder_source_with_classnames_file(image_folder: Path, tmp_path: Path):
    names = tmp_path / "names.txt"
    names.write_text("sky\nleaf\napple\n")
    assert folder_source(image_folder, names).classnames == ["sky", "leaf", "apple"]
    names.write_text("sky\nleaf\n")
    with pytest.raises(ValueError, match="2 names for 3 class folders"):
        folder_source(image_folder, names)


def test_folder_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_source(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="empty_class' has no images"):
        folder_source(tmp_path)


def test_clip_benchmark_local(clip_benchmark_dir: Path):
    src = wds_source(str(clip_benchmark_dir), "test")
    assert src.classnames == ["cat", "dog"]
    assert src.templates == ["a photo of a {c}.", "a blurry photo of a {c}."]
    samples = list(src.samples)
    assert [s["__key__"] for s in samples] == [f"s{i:07d}" for i in range(6)]
    assert [sample_label(s) for s in samples] == [0, 1, 0, 1, 0, 1]
    assert all(image_entry(s)[0] == "webp" for s in samples)


def test_clip_benchmark_errors(tmp_path: Path, clip_benchmark_dir: Path):
    with pytest.raises(FileNotFoundError, match=r"classnames.txt not found"):
        wds_source(str(tmp_path / "nothing"), "test")
    with pytest.raises(FileNotFoundError, match="split 'train'"):
        wds_shard_urls(str(clip_benchmark_dir), "train")


@pytest.fixture
def http_root(clip_benchmark_dir: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip_benchmark_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_clip_benchmark_over_http(http_root: str):
    src = wds_source(http_root, "test")
    assert src.classnames == ["cat", "dog"]
    assert len(list(src.samples)) == 6


def test_class_subsets_are_nested_seeded_and_renumbered(tmp_path):
    """dataset.class_subset: a seeded draw of k classes; for one seed the smaller subset lies in the larger one."""
    from coderflow.config import DatasetConfig
    from coderflow.storage.shards import sample_label
    from coderflow.tasks.ingest.sources import make_source

    def subset(k: int | None, seed: int = 0) -> tuple[list[str], list[tuple[str, int]]]:
        src = make_source(DatasetConfig(demo_images_per_class=2, class_subset=k, seed=seed))
        return src.classnames, [(s["json"]["class_name"], sample_label(s)) for s in src.samples]

    everything, _ = subset(None)
    small, small_samples = subset(3)
    large, large_samples = subset(7)
    assert len(small) == 3 and set(small) < set(large) and len(large) == 7
    assert small == [c for c in everything if c in small]  # the source's class order
    assert {name: label for name, label in small_samples} == {c: i for i, c in enumerate(small)}  # renumbered
    assert len(small_samples) == 3 * 2 and len(large_samples) == 7 * 2  # every image of a kept class, no other
    assert subset(3, seed=1)[0] != small or subset(3, seed=2)[0] != small  # the draw follows the seed
    with pytest.raises(ValueError, match=r"class_subset=11: the source has 10 classes"):
        subset(11)
