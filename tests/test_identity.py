"""Data identity: every stored result belongs to the data it claims (content hashes, source changes, names, splits)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_runner import run_cli
from conftest import png_bytes

from coderflow.config import DatasetConfig, PipelineConfig, default_dataset_name
from coderflow.storage.db import query
from coderflow.storage.layout import Layout, part_hash
from coderflow.storage.shards import INGEST_MARKER, split_overlaps, split_shards, validate_classnames
from coderflow.tasks.ingest.checks import identity_conflict, listing_changes, source_identity, source_listing
from coderflow.tasks.ingest.sources import folder_source, ratio_slice

CLASSES = ("red_apple", "green_leaf", "blue_sky")


def make_folder(root: Path, per_class: int = 4, start: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """An image folder whose images all differ in content (colour from class and index)."""
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            (root / name / f"{i}.png").write_bytes(png_bytes((40 + ci * 70, (i * 23) % 256, (i * 7 + ci) % 256), 24))
    return root


def tiny_config(path: Path, **dataset: object) -> Path:
    """A YAML config for the smallest run: class-name texts only, zero-shot CLIP."""
    cfg = {
        "dataset": {"samples_per_shard": 5, **dataset},
        "model": {"batch_size": 16},
        "texts": {"types": ["name"]},
        "methods": ["clip"],
    }
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def n_samples(workdir: Path, run_id: str | None = None) -> int:
    where = f"AND run_id = '{run_id}'" if run_id else ""
    sql = f"SELECT max(value) AS n FROM metrics WHERE metric = 'n_samples' AND method = 'clip' {where}"
    return int(query(Layout.at(workdir), sql)["n"][0].as_py())


def newest_run(workdir: Path) -> str:
    manifests = [json.loads(p.read_text()) for p in (workdir / "runs").glob("*/manifest.json")]
    return max((m for m in manifests if m["status"] == "completed"), key=lambda m: m["finished_at"])["run_id"]


# pure pieces --------------------------------------------------------------------------------------------
def test_default_dataset_name_is_the_source_folder():
    assert default_dataset_name("/data/My Photos/") == "My-Photos"
    assert default_dataset_name("/data/pets/{split}") == "pets"
    assert default_dataset_name("https://host/wds_cifar10/") == "wds_cifar10"
    assert default_dataset_name(None) == "demo"
    assert DatasetConfig(kind="folder", source="/x/pets/{split}").name == "pets"
    assert DatasetConfig(kind="folder", source="/x/pets", name="mine").name == "mine"


def test_source_listing_sees_added_removed_and_modified_files(tmp_path: Path):
    root = make_folder(tmp_path / "photos")
    cfg = DatasetConfig(kind="folder", source=str(root))
    before = source_listing(cfg)
    assert len(before) == 12
    assert source_listing(cfg) == before  # cheap and stable: nothing is opened
    make_folder(root, per_class=2, start=4)  # 6 new images
    (root / "red_apple" / "0.png").unlink()
    (root / "green_leaf" / "1.png").write_bytes(png_bytes((1, 2, 3), 30))
    after = source_listing(cfg)
    assert listing_changes(before, after) == "6 added, 1 removed, 1 modified"


def test_identity_conflicts_name_both_sources_and_the_flag(tmp_path: Path):
    a = DatasetConfig(kind="folder", source=str(tmp_path / "a"), name="pets")
    b = DatasetConfig(kind="folder", source=str(tmp_path / "b"), name="pets")
    assert identity_conflict(None, a) is None
    assert identity_conflict(source_identity(a), a) is None
    message = identity_conflict(source_identity(a), b)
    assert str(tmp_path / "a") in message and str(tmp_path / "b") in message and "--replace-dataset" in message
    # names that map to the same folder ("x y" and "x-y" are both shards/x-y) are told apart
    xy = DatasetConfig(kind="folder", source=str(tmp_path / "a"), name="x y")
    assert "same folder as dataset 'x y'" in identity_conflict(
        source_identity(xy), a.model_copy(update={"name": "x-y"})
    )


def test_ratio_slices_are_disjoint_stratified_and_seeded():
    ratios = {"train": 0.5, "val": 0.2, "test": 0.3}
    parts = {s: ratio_slice(20, ratios, s, seed=3, class_index=1) for s in ratios}
    assert sorted(i for p in parts.values() for i in p) == list(range(20))
    assert [len(p) for p in parts.values()] == [10, 4, 6]
    assert ratio_slice(20, ratios, "val", seed=3, class_index=1) == parts["val"]
    assert ratio_slice(20, ratios, "val", seed=4, class_index=1) != parts["val"]
    with pytest.raises(ValueError, match="no share for split 'extra'"):
        ratio_slice(20, ratios, "extra", seed=3, class_index=1)


def test_split_ratio_folder_source_takes_one_part_per_class(tmp_path: Path):
    root = make_folder(tmp_path / "photos", per_class=10)
    ratios = {"train": 0.5, "val": 0.2, "test": 0.3}
    counts = {s: sum(1 for _ in folder_source(root, None, s, ratios, 0).samples) for s in ratios}
    assert counts == {"train": 15, "val": 6, "test": 9}


@pytest.mark.parametrize("sep", ["\n", "\r", "\u2028", "\x85", "\x1e"])
def test_class_names_with_line_separators_are_refused(sep: str):
    with pytest.raises(ValueError, match="contains a line separator"):
        validate_classnames(["cat", f"big{sep}dog"], "folder x")


# through the real CLI and a real Prefect server ------------------------------------------------------------


@pytest.mark.flow
def test_changed_source_is_reingested_and_old_embeddings_never_match(prefect_server, tmp_path: Path):
    """Adding images to the source re-ingests, says what changed, drops the old derived files, counts them all."""
    photos = make_folder(tmp_path / "photos")
    workdir = tmp_path / "w"
    cfg = tiny_config(tmp_path / "run.yaml")
    args = ["run", "-c", str(cfg), "--source", str(photos), "--workdir", str(workdir)]
    first = run_cli(args)
    assert first.exit_code == 0, first.output
    layout = Layout.at(workdir)
    assert layout.shard_dir("photos", "test").is_dir()  # the dataset is named after its folder, not 'demo'
    assert n_samples(workdir) == 12
    old_parts = sorted(layout.image_embedding_dir("ViT-S-32-alt__random", "photos", "test").glob("*.parquet"))
    assert old_parts and all(part_hash(p) for p in old_parts)

    make_folder(photos, per_class=2, start=4)  # 6 more images
    second = run_cli(args)
    assert second.exit_code == 0, second.output
    assert "inputs changed" in second.output and "source" in second.output
    run_id = newest_run(workdir)
    assert n_samples(workdir, run_id) == 18
    shards = split_shards(layout, "photos", "test")
    assert sum(s.samples for s in shards) == 18
    parts = sorted(layout.image_embedding_dir("ViT-S-32-alt__random", "photos", "test").glob("*.parquet"))
    assert {part_hash(p) for p in parts} == {s.sha256[:16] for s in shards}  # stale files are gone
    marker = json.loads((layout.shard_dir("photos", "test") / INGEST_MARKER).read_text())
    assert marker["split_id"] and len(marker["shards"]) == len(shards)

    # unchanged: up to date; --reingest forces a new ingest (same content: same hashes, embeddings reused)
    third = run_cli(args)
    assert third.exit_code == 0 and "up to date" in third.output, third.output
    mtime = (layout.shard_dir("photos", "test") / INGEST_MARKER).stat().st_mtime_ns
    fourth = run_cli([*args, "--reingest"])
    assert fourth.exit_code == 0, fourth.output
    assert (layout.shard_dir("photos", "test") / INGEST_MARKER).stat().st_mtime_ns != mtime
    assert sorted(layout.image_embedding_dir("ViT-S-32-alt__random", "photos", "test").glob("*.parquet")) == parts


@pytest.mark.flow
def test_another_source_under_a_dataset_name_is_refused_then_replaced(prefect_server, tmp_path: Path):
    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b", per_class=2, classes=("cat", "dog"))
    workdir = tmp_path / "w"
    base = ["ingest", "--workdir", str(workdir), "--dataset.name", "pets"]
    assert run_cli([*base, "--source", str(a)]).exit_code == 0
    refused = run_cli([*base, "--source", str(b)])
    assert refused.exit_code == 2
    line = refused.output.strip()
    assert "\n" not in line.replace("\n ", " ") or len(line.splitlines()) <= 3  # one message, no traceback
    assert str(a) in refused.output and str(b) in refused.output and "--replace-dataset" in refused.output
    layout = Layout.at(workdir)
    assert layout.classnames_file("pets").read_text().splitlines() == ["blue sky", "green leaf", "red apple"]

    replaced = run_cli([*base, "--source", str(b), "--replace-dataset"])
    assert replaced.exit_code == 0, replaced.output
    assert layout.classnames_file("pets").read_text().splitlines() == ["cat", "dog"]
    assert sum(s.samples for s in split_shards(layout, "pets", "test")) == 4

    # names that sanitise to the same folder are different datasets: refused
    collide = run_cli(["ingest", "--workdir", str(workdir), "--dataset.name", "pets!", "--source", str(b)])
    assert collide.exit_code == 2 and "same folder as dataset 'pets'" in collide.output


@pytest.mark.flow
def test_class_files_are_rewritten_only_on_change_and_checked_against_the_shards(prefect_server, tmp_path: Path):
    workdir = tmp_path / "w"
    base = ["ingest", "--workdir", str(workdir), "--kind", "demo", "--dataset.name", "demo"]
    assert run_cli([*base, "--split", "test"]).exit_code == 0
    layout = Layout.at(workdir)
    names = layout.classnames_file("demo")
    stamp = names.stat().st_mtime_ns
    assert run_cli([*base, "--split", "val"]).exit_code == 0  # another split, same classes
    assert names.stat().st_mtime_ns == stamp

    # a class list that no longer matches the shards (e.g. a killed ingest of another source) forces a re-ingest
    names.write_text("a\nb\n")
    out = run_cli([*base, "--split", "test"])
    assert out.exit_code == 0 and "up to date" not in out.output, out.output
    assert names.read_text().splitlines()[0] == "circle"


@pytest.mark.flow
def test_a_shard_changed_after_ingest_is_refused_by_embedding(prefect_server, tmp_path: Path):
    from coderflow.flows.pipeline import embed_images

    workdir = tmp_path / "w"
    assert run_cli(["ingest", "--workdir", str(workdir), "--source", str(make_folder(tmp_path / "p"))]).exit_code == 0
    layout = Layout.at(workdir)
    shard = Path(split_shards(layout, "p", "test")[0].path)
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # one byte of the first image changes; the file name stays
    shard.write_bytes(bytes(data))
    cfg = DatasetConfig(kind="folder", source=str(tmp_path / "p"))
    with pytest.raises(ValueError, match="changed since it was ingested"):
        embed_images(cfg, PipelineConfig().model, str(workdir))


def test_fewshot_on_one_folder_without_split_is_refused_before_work(tmp_path: Path):
    photos = make_folder(tmp_path / "photos")
    workdir = tmp_path / "w"
    out = run_cli(["fewshot", "--workdir", str(workdir), "--source", str(photos), "--kind", "folder"])
    assert out.exit_code == 2
    assert "has no {split} part" in out.output and "--split-ratio" in out.output
    assert not workdir.exists() or not list(workdir.rglob("*.tar"))


@pytest.mark.flow
def test_fewshot_refuses_splits_that_share_images_and_accepts_a_split_ratio(prefect_server, tmp_path: Path):
    from coderflow.flows.fewshot import fewshot

    data = tmp_path / "pets"
    for split, start in (("train", 0), ("val", 10), ("test", 20)):
        make_folder(data / split, per_class=3, start=start)
    shutil.copy(data / "train" / "red_apple" / "0.png", data / "test" / "red_apple" / "copy.png")
    workdir = tmp_path / "w"
    cfg = PipelineConfig(
        workdir=str(workdir), dataset=DatasetConfig(kind="folder", source=str(data / "{split}")),
        fewshot={"shots": [1], "seeds": [1], "augment_views": 1},
    )  # fmt: skip
    with pytest.raises(ValueError, match="train and test share 1 images"):
        fewshot(cfg)
    assert not (workdir / "embeddings").exists()  # refused before anything was embedded

    # one folder split by ratio: disjoint splits, recorded in the ingest marker
    one = make_folder(tmp_path / "one", per_class=10)
    ratio = {"train": 0.5, "val": 0.2, "test": 0.3}
    for split in ratio:
        ds = DatasetConfig(kind="folder", source=str(one), split=split, split_ratio=ratio)
        out = run_cli(
            [
                "ingest",
                "--workdir",
                str(workdir),
                "--source",
                str(one),
                "--split",
                split,
                "--split-ratio",
                "0.5,0.2,0.3",
            ],
        )
        assert out.exit_code == 0, out.output
        assert ds.name == "one"
    layout = Layout.at(workdir)
    assert split_overlaps(layout, "one", list(ratio)) == []
    assert [sum(s.samples for s in split_shards(layout, "one", sp)) for sp in ratio] == [15, 6, 9]
    marker = json.loads((layout.shard_dir("one", "val") / INGEST_MARKER).read_text())
    assert marker["split_ratio"] == {"ratios": ratio, "seed": 0, "split": "val"}


@pytest.mark.flow
def test_two_ingests_at_once_give_one_consistent_split(prefect_server, tmp_path: Path):
    from coderflow.flows.pipeline import ingest_dataset

    photos = make_folder(tmp_path / "photos", per_class=6)
    workdir = str(tmp_path / "w")
    cfg = DatasetConfig(kind="folder", source=str(photos), samples_per_shard=4)
    results: list = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            results.append(ingest_dataset(cfg, workdir))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(r.skipped for r in results) == [False, True]  # the second waited, then found it done
    layout = Layout.at(workdir)
    shards = split_shards(layout, "photos", "test")
    assert sum(s.samples for s in shards) == 18
    assert sorted(p.name for p in layout.shard_dir("photos", "test").glob("*.tar")) == [s.name for s in shards]
    assert not [p for p in layout.dataset_dir("photos").iterdir() if p.name.startswith(".")]


@pytest.mark.flow
def test_a_copied_or_moved_work_directory_answers_queries(demo_run, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_run["workdir"], copy)  # cp -a: the DuckDB views still name the original folder
    sql = "SELECT count(*) AS n, count(DISTINCT run_id) AS runs FROM predictions"
    want = query(Layout.at(demo_run["workdir"]), sql).to_pylist()
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    out = run_cli(["query", sql, "--workdir", str(moved), "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == want
    # it reads the moved folder's files, not the original's
    preds = next((moved / "runs").glob("*/predictions.parquet"))
    dropped = pq.read_metadata(preds).num_rows - 10
    pq.write_table(pq.read_table(preds).slice(0, 10), preds)
    out = run_cli(["query", sql, "--workdir", str(moved), "--format", "json"])
    assert json.loads(out.output)[0]["n"] == want[0]["n"] - dropped
    assert query(Layout.at(demo_run["workdir"]), sql).to_pylist() == want


def test_shards_are_a_function_of_their_samples_and_stale_staging_goes(tmp_path: Path):
    """The same samples make byte-identical shards (fixed tar headers), and a killed ingest's staging is removed."""
    from coderflow.storage.shards import write_split

    samples = [{"__key__": f"k{i}", "png": png_bytes((i, 2, 3)), "cls": i % 2} for i in range(5)]
    split = tmp_path / "shards" / "d" / "test"
    write_split(iter(samples), split, "d-test-%06d.tar", 2, {})
    first = json.loads((split / INGEST_MARKER).read_text())
    leftover = split.parent / ".test.k1ll3d"
    leftover.mkdir()
    (leftover / "d-test-000000.tar").write_bytes(b"half")
    write_split(iter(samples), split, "d-test-%06d.tar", 2, {})
    second = json.loads((split / INGEST_MARKER).read_text())
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    assert [s["samples"] for s in second["shards"]] == [2, 2, 1] and first["split_id"] == second["split_id"]
    assert not leftover.exists()
    assert len(json.loads((split / "_images.json").read_text())) == 5


@pytest.mark.flow
def test_a_split_is_never_redefined_quietly_nor_an_old_run_rescored_on_new_images(prefect_server, tmp_path: Path):
    from coderflow.api import load_run

    photos = make_folder(tmp_path / "photos", per_class=10)
    workdir = tmp_path / "w"
    config = tiny_config(tmp_path / "run.yaml", source=str(photos))
    out = run_cli(["run", "-c", str(config), "--workdir", str(workdir)])
    assert out.exit_code == 0, out.output
    old = newest_run(workdir)
    marker = workdir / "shards" / "photos" / "test" / INGEST_MARKER
    first = json.loads(marker.read_text())["split_id"]
    assert json.loads((workdir / "runs" / old / "manifest.json").read_text())["split_id"] == first

    # a --split-ratio under the name whose test split holds the whole folder: refused before work, in one line
    base = ["--workdir", str(workdir), "--source", str(photos)]
    out = run_cli(["fewshot", *base, "--split-ratio", "0.5,0.2,0.3", "--fewshot.shots", "1", "--fewshot.seeds", "1"])
    assert out.exit_code == 2, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert "split test holds the whole folder" in out.output
    assert "--replace-dataset" in out.output and "--dataset.name" in out.output
    assert json.loads(marker.read_text())["split_id"] == first and not (marker.parent.parent / "train").exists()

    # said explicitly, the split is redefined; the old run is then never re-scored on the new images
    out = run_cli(["ingest", *base, "--split-ratio", "0.5,0.2,0.3", "--replace-dataset"])
    assert out.exit_code == 0, out.output
    assert run_cli(["embed", "--workdir", str(workdir), "--dataset.name", "photos"]).exit_code == 0
    now = json.loads(marker.read_text())["split_id"]
    assert now != first
    out = run_cli(["ablate", old, "--workdir", str(workdir)])
    assert out.exit_code == 2, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert f"run {old} was computed on split test {first}" in out.output
    assert f"the split is now {now} (re-ingested or re-split): re-run it" in out.output
    with pytest.raises(ValueError, match="re-ingested or re-split"):
        load_run(old, str(workdir)).score("clip")
