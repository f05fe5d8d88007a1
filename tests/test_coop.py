"""CoOp's dataset layout and the references' support-set draw: ported reference code against coderflow's."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_runner import run_cli
from conftest import png_bytes

from coderflow.config import DatasetConfig, build_config
from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.fewshot.sampling import draw_support, reference_support
from coderflow.tasks.fewshot.support import plan_supports
from coderflow.tasks.ingest.checks import check_distinct_splits, source_identity, source_listing
from coderflow.tasks.ingest.sources import make_source


# The references' code, ported as it is (YCaigogogo/CVPR24-CODER datasets/few_shot_dataset/utils.py and
# oxford_pets.py; CoOp and Tip-Adapter have the same functions) ------------------------------------------------
class Datum:
    def __init__(self, impath="", label=0, domain=-1, classname=""):
        self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label


def read_split(split, path_prefix):
    def _convert(items):
        out = []
        for impath, label, classname in items:
            impath = os.path.join(path_prefix, impath)
            out.append(Datum(impath=impath, label=int(label), classname=classname))
        return out

    return _convert(split["train"]), _convert(split["val"]), _convert(split["test"])


def split_dataset_by_label(data_source):
    output = defaultdict(list)
    for item in data_source:
        output[item.label].append(item)
    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=True):
    if num_shots < 1:
        if len(data_sources) == 1:
            return data_sources[0]
        return data_sources
    output = []
    for data_source in data_sources:
        tracker = split_dataset_by_label(data_source)
        dataset = []
        for _label, items in tracker.items():
            if len(items) >= num_shots:
                sampled_items = random.sample(items, num_shots)
            else:
                if repeat:  # noqa: SIM108 (the reference's code as it is)
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
            dataset.extend(sampled_items)
        output.append(dataset)
    if len(output) == 1:
        return output[0]
    return output


def reference_draw(split: dict, image_dir: str, shots: int, seed: int) -> list[str]:
    """The support images the references train on for (shots, seed): set_seed's random.seed, then read_split and
    generate_fewshot_dataset (nothing draws from `random` in between), as paths relative to the image folder."""
    random.seed(seed)
    train, _val, _test = read_split(split, image_dir)
    return [os.path.relpath(d.impath, image_dir) for d in generate_fewshot_dataset(train, num_shots=shots)]


# a split file --------------------------------------------------------------------------------------------------
CLASSES = ("abyssinian", "american_bulldog", "beagle", "bengal")
TRAIN_COUNTS = (20, 16, 5, 9)  # beagle and bengal have fewer than 16: drawn with repetition


def split_file_rows() -> dict[str, list[list]]:
    """A split_zhou_*.json's content: classes interleaved in a shuffled order, so that the order of first appearance
    (the references' class order) is not the label order."""
    rng = np.random.default_rng(5)
    rows = {"train": [], "val": [], "test": []}
    for split, counts in (("train", TRAIN_COUNTS), ("val", (2,) * 4), ("test", (2,) * 4)):
        items = [(c, i) for c, n in enumerate(counts) for i in range(n)]
        for j in rng.permutation(len(items)):
            c, i = items[j]
            name = CLASSES[c].capitalize() if c % 2 == 0 else CLASSES[c]
            rows[split].append([f"{name}_{split}_{i}.png", c, CLASSES[c]])
    return rows


def test_reference_sampling_draws_what_the_references_draw():
    split = split_file_rows()
    paths = [r[0] for r in split["train"]]
    labels = np.array([r[1] for r in split["train"]])
    assert labels[0] != 0  # the first class to appear is not label 0
    for seed in (1, 2, 3):
        for shots in range(1, 17):
            want = reference_draw(split, "/data/oxford_pets/images", shots, seed)
            got = reference_support(labels, shots, seed, len(CLASSES))
            assert [paths[i] for i in got.indices] == want, (seed, shots)
            assert got.short_classes == {c: n for c, n in enumerate(TRAIN_COUNTS) if n < shots}
            sets, _ = plan_supports(paths, labels, [shots], [seed], len(CLASSES), "reference")
            assert sets[f"{shots}-{seed}"] == want
    sixteen = reference_support(labels, 16, 1).indices
    assert len(sixteen) == 16 * 4 and len(set(sixteen.tolist())) < 16 * 4  # short classes repeat images


def test_per_class_sampling_is_kept_and_differs():
    labels = np.array([r[1] for r in split_file_rows()["train"]])
    per_class = draw_support(labels, 4, 1, len(CLASSES), "per_class")
    reference = draw_support(labels, 4, 1, len(CLASSES), "reference")
    assert per_class.labels.tolist() == sorted(per_class.labels.tolist())  # ascending class, then index
    assert sorted(per_class.indices.tolist()) != sorted(reference.indices.tolist())
    with pytest.raises(ValueError, match="reference or per_class"):
        draw_support(labels, 4, 1, None, "other")  # type: ignore[arg-type]


def test_reference_is_the_default_for_every_kind():
    assert build_config(None).fewshot.sampling == "reference"
    assert build_config(None, **{"dataset.source": "/x", "dataset.kind": "folder"}).fewshot.sampling == "reference"


# a CoOp root ---------------------------------------------------------------------------------------------------
def make_coop_root(root: Path) -> dict[str, list[list]]:
    """ROOT/oxford_pets/images/*.png (every image its own colour) and split_zhou_OxfordPets.json."""
    split = split_file_rows()
    folder = root / "oxford_pets"
    (folder / "images").mkdir(parents=True)
    for k, row in enumerate(r for rows in split.values() for r in rows):
        (folder / "images" / row[0]).write_bytes(png_bytes((k * 5 % 256, k * 11 % 256, 40 + k), 24))
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split, indent=4))
    return split


def test_coop_source_reads_the_split_file_in_its_order(tmp_path: Path):
    split = make_coop_root(tmp_path / "data")
    cfg = build_config(None, preset="pets", **{"dataset.kind": "coop", "dataset.source": str(tmp_path / "data")})
    ds = cfg.dataset
    assert (ds.name, ds.coop_dir, ds.coop_split_file, ds.coop_image_dir) == (
        "oxford_pets", "oxford_pets", "split_zhou_OxfordPets.json", "images",
    )  # fmt: skip
    source = make_source(ds.model_copy(update={"split": "train"}))
    assert source.classnames == ["abyssinian", "american bulldog", "beagle", "bengal"]  # by label, '_' as a space
    samples = list(source.samples)
    assert [s["json"]["path"] for s in samples] == [r[0] for r in split["train"]]
    assert [s["cls"] for s in samples] == [r[1] for r in split["train"]]
    assert source_identity(ds)["source"] == str((tmp_path / "data" / "oxford_pets").resolve())
    listing = source_listing(ds.model_copy(update={"split": "val"}))
    assert len(listing) == 8 + 1 and any(k.endswith("split_zhou_OxfordPets.json") for k in listing)
    assert "coop_dir" not in DatasetConfig(source=str(tmp_path), kind="folder").fingerprint()


def test_coop_mistakes_are_named(tmp_path: Path):
    split = make_coop_root(tmp_path / "data")
    with pytest.raises(ValueError, match="needs the dataset's folder and split file"):
        build_config(None, **{"dataset.kind": "coop", "dataset.source": str(tmp_path / "data")})
    base = {"dataset.kind": "coop", "dataset.source": str(tmp_path / "data")}
    with pytest.raises(FileNotFoundError, match=r"dataset\.coop_dir"):
        make_source(build_config(None, preset="dtd", **base).dataset)
    (tmp_path / "data" / "oxford_pets" / "images" / split["test"][3][0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of split 'test'"):
        make_source(build_config(None, preset="pets", **base).dataset)
    with pytest.raises(ValueError, match="no split 'extra'"):
        make_source(build_config(None, preset="pets", **base, **{"dataset.split": "extra"}).dataset)


def test_fgvc_and_imagenet_read_as_the_references(tmp_path: Path):
    fgvc = tmp_path / "data" / "fgvc_aircraft"
    (fgvc / "images").mkdir(parents=True)
    (fgvc / "variants.txt").write_text("707-320\nA300B4\n")
    (fgvc / "images_variant_train.txt").write_text("0001 A300B4\n0002 707-320\n")
    for name in ("0001", "0002"):
        (fgvc / "images" / f"{name}.jpg").write_bytes(png_bytes((1, 2, 3)))
    base = {"dataset.kind": "coop", "dataset.source": str(tmp_path / "data"), "dataset.split": "train"}
    source = make_source(build_config(None, preset="fgvc_aircraft", **base).dataset)
    assert source.classnames == ["707-320", "A300B4"]
    assert [(s["json"]["path"], s["cls"]) for s in source.samples] == [("0001.jpg", 1), ("0002.jpg", 0)]

    net = tmp_path / "data" / "imagenet"
    for wnid in ("n02", "n01"):
        (net / "images" / "val" / wnid).mkdir(parents=True)
        (net / "images" / "val" / wnid / "b.JPEG").write_bytes(png_bytes((4, 5, 6)))
        (net / "images" / "val" / wnid / "a.JPEG").write_bytes(png_bytes((6, 5, 4)))
    (net / "classnames.txt").write_text("n01 tench\nn02 goldfish fish\n")
    cfg = build_config(None, preset="imagenet", **{**base, "dataset.split": "test"}).dataset
    source = make_source(cfg)  # the references test on val
    assert source.classnames == ["tench", "goldfish fish"]
    got = [(s["json"]["path"], s["cls"]) for s in source.samples]
    assert got == [("val/n01/a.JPEG", 0), ("val/n01/b.JPEG", 0), ("val/n02/a.JPEG", 1), ("val/n02/b.JPEG", 1)]
    with pytest.raises(ValueError, match="no test split of its own"):  # val and test would be the same images
        check_distinct_splits(cfg, ["train", "val", "test"])
    check_distinct_splits(cfg, ["train", "test"])  # searched on test, as the references: the preset's default
    assert build_config(None, preset="imagenet", **base).fewshot.searches_on_test


@pytest.mark.flow
@pytest.mark.slow
def test_coop_fewshot_cli_stores_the_reference_support_sets(prefect_server, tmp_path: Path):
    split = make_coop_root(tmp_path / "data")
    workdir = tmp_path / "w"
    shots, seeds = (1, 4, 16), (1, 2, 3)
    args = ["fewshot", "--kind", "coop", "--source", tmp_path / "data", "--preset", "pets", "--workdir", workdir]
    args += ["--shots", ",".join(map(str, shots)), "--seeds", ",".join(map(str, seeds)), "--texts.types", "name"]
    args += ["--fewshot.augment_views", "0", "--fewshot.methods", "tip_adapter", "--fewshot.search", "fixed"]
    out = run_cli(args)
    assert out.exit_code == 0, out.output
    layout = Layout.at(workdir)
    (run_id,) = [r["run_id"] for r in query(layout, "SELECT run_id FROM runs").to_pylist()]
    rows = pq.read_table(layout.run_file(run_id, "support.parquet")).to_pylist()
    for seed in seeds:
        for k in shots:
            cell = [r for r in rows if (r["shots"], r["seed"]) == (k, seed)]
            assert [r["source_path"] for r in cell] == reference_draw(split, "images", k, seed), (k, seed)
            assert {r["sampling"] for r in cell} == {"reference"}
    keys = {r["sample_key"]: r["source_path"] for r in rows}
    stored = query(layout, "SELECT DISTINCT sample_key, source_path, sampling FROM fewshot_support").to_pylist()
    assert {r["sample_key"]: r["source_path"] for r in stored} == keys
    train_order = [r[0] for r in split["train"]]
    assert all(train_order[int(key[1:])] == path for key, path in keys.items())  # keys follow the split file
