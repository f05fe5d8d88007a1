"""CLIP_benchmark's WebDataset datasets by name (`--benchmark NAME`): where each is published, its splits and classes.

The names are CLIP_benchmark's `wds/<name>` datasets (its benchmark/webdatasets.txt) that classify one label per
image; `wds/<name>` is read from the root `<base>/wds_<name with / as ->` (its clip_benchmark/cli.py
`dataset_cleaned`, e.g. `wds_vtab-cifar10`), laid out as clip_benchmark/datasets/builder.py `build_wds_dataset`
reads it: `<split>/0.tar ...`, `<split>/nshards.txt`, `classnames.txt`, `zeroshot_classification_templates.txt`.
The base is the Hugging Face hub organisation the datasets are published under, or a mirror of it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

# huggingface_hub's fsspec file system (installed with open_clip) reads `hf://datasets/<organisation>/<repository>`.
DEFAULT_BENCHMARK_BASE = "hf://datasets/clip-benchmark"


@dataclass(frozen=True)
class Benchmark:
    """One dataset: its CLIP_benchmark name (without `wds/`), splits, number of classes, coderflow preset."""

    name: str
    splits: tuple[str, ...]
    classes: int
    preset: str | None = None

    @property
    def short(self) -> str:
        """The name without `vtab/`: the dataset's default name in coderflow (`vtab/pets` -> `pets`)."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def folder(self) -> str:
        """The root's folder (and hub repository) name: `wds_` + the name with `/` as `-`."""
        return "wds_" + self.name.replace("/", "-")

    def url(self, base: str = DEFAULT_BENCHMARK_BASE) -> str:
        """The dataset's root under `base` (a hub organisation, a folder or any fsspec URL)."""
        return f"{base.rstrip('/')}/{self.folder}"

    def row(self) -> dict[str, Any]:
        """A row of `coderflow datasets`."""
        return {"name": self.name, "splits": ",".join(self.splits), "classes": self.classes, "preset": self.preset}


TT = ("train", "test")
T = ("test",)
# name, splits, classes, coderflow preset (coderflow/presets/<preset>.yaml). Splits: the train/test splits
# CLIP_benchmark's builder.py defines for the dataset (ImageNet's variants and ObjectNet: test only; SUN397 has no
# predefined split: test, as published). Left out:
# the retrieval sets (mscoco_captions, flickr8k, flickr30k) and voc2007_multilabel. food101 is published under the same
# organisation (wds_food101) though not in webdatasets.txt. ImageNet's variants take ImageNet's preset (its classes).
_TABLE: tuple[tuple[str, tuple[str, ...], int, str | None], ...] = (
    ("imagenet1k", TT, 1000, "imagenet"), ("imagenetv2", T, 1000, "imagenet"),
    ("imagenet_sketch", T, 1000, "imagenet"), ("imagenet-a", T, 200, "imagenet"), ("imagenet-r", T, 200, "imagenet"),
    ("imagenet-o", T, 200, None), ("objectnet", T, 113, None), ("fer2013", TT, 7, None), ("voc2007", TT, 20, None),
    ("sun397", T, 397, "sun397"), ("cars", TT, 196, "cars"), ("fgvc_aircraft", TT, 100, "fgvc_aircraft"),
    ("food101", TT, 101, "food101"), ("mnist", TT, 10, None), ("stl10", TT, 10, None), ("gtsrb", TT, 43, None),
    ("country211", TT, 211, None), ("renderedsst2", TT, 2, None),
    ("vtab/caltech101", TT, 102, "caltech101"), ("vtab/cifar10", TT, 10, None), ("vtab/cifar100", TT, 100, None),
    ("vtab/clevr_count_all", TT, 8, None), ("vtab/clevr_closest_object_distance", TT, 6, None),
    ("vtab/diabetic_retinopathy", TT, 5, None), ("vtab/dmlab", TT, 6, None),
    ("vtab/dsprites_label_orientation", TT, 16, None), ("vtab/dsprites_label_x_position", TT, 16, None),
    ("vtab/dsprites_label_y_position", TT, 16, None), ("vtab/dtd", TT, 47, "dtd"), ("vtab/eurosat", TT, 10, "eurosat"),
    ("vtab/kitti_closest_vehicle_distance", TT, 4, None), ("vtab/flowers", TT, 102, "flowers102"),
    ("vtab/pets", TT, 37, "pets"), ("vtab/pcam", TT, 2, None), ("vtab/resisc45", TT, 45, None),
    ("vtab/smallnorb_label_azimuth", TT, 18, None), ("vtab/smallnorb_label_elevation", TT, 9, None),
    ("vtab/svhn", TT, 10, None),
)  # fmt: skip
BENCHMARKS: dict[str, Benchmark] = {row[0]: Benchmark(*row) for row in _TABLE}
# Every spelling of a name: vtab/pets, pets, wds/vtab/pets (CLIP_benchmark's) and wds_vtab-pets (the root's folder).
_SPELLINGS: dict[str, Benchmark] = {
    spelling: b for b in BENCHMARKS.values() for spelling in (b.name, b.short, f"wds/{b.name}", b.folder)
}


def find_benchmark(name: str) -> Benchmark | None:
    """The dataset a name means (`cifar10`, `vtab/cifar10`, `wds/vtab/cifar10`, `wds_vtab-cifar10`), else None."""
    return _SPELLINGS.get(name.strip().lower().rstrip("/"))


def unknown_benchmark(name: str) -> str:
    """The one-line refusal of a name that is no known benchmark: the closest names, then all of them."""
    close = difflib.get_close_matches(name.strip().lower(), list(_SPELLINGS), n=1)
    hint = f"did you mean {find_benchmark(close[0]).short!r}? " if close else ""  # type: ignore[union-attr]
    names = ", ".join(b.short for b in BENCHMARKS.values())
    return f"unknown benchmark {name!r}: {hint}choose one of {names} (`coderflow datasets` lists them)"


def benchmark_name(name: str) -> str:
    """The CLIP_benchmark name of a benchmark however spelled (`cifar10` -> `vtab/cifar10`); an unknown one is refused
    (ValueError) in one line that lists the known ones."""
    bench = find_benchmark(name)
    if bench is None:
        raise ValueError(unknown_benchmark(name))
    return bench.name


def benchmark_dataset(data: dict[str, Any]) -> dict[str, Any]:
    """Dataset settings with what `benchmark` implies filled in: kind `wds`, source `<benchmark_base>/wds_<name>`, and
    the name (its short name) unless given. An explicit other source or kind is refused; an unknown benchmark is left
    to the field's own check. `data` without a benchmark comes back as it is."""
    given = data.get("benchmark")
    bench = find_benchmark(given) if isinstance(given, str) else None
    if bench is None:
        return data
    url = bench.url(str(data.get("benchmark_base") or DEFAULT_BENCHMARK_BASE).strip())
    source = data.get("source")
    if source and str(source).rstrip("/") != url:
        raise ValueError(
            f"--benchmark {given} reads {url}, but dataset.source is {source}: give one of them (a mirror of the "
            "benchmarks goes in --dataset.benchmark-base)"
        )
    if data.get("kind") not in (None, "wds"):
        raise ValueError(
            f"--benchmark {given} is a CLIP_benchmark root (kind wds), not kind {data['kind']!r}: drop --kind"
        )
    return {**data, "kind": "wds", "source": url, "name": data.get("name") or bench.short}


def benchmark_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Pipeline settings with the preset of their dataset's benchmark (`--benchmark pets`: `pets`) unless a preset is
    given; the preset's settings, in turn, lie under the explicit ones."""
    dataset = data.get("dataset")
    given = dataset.get("benchmark") if isinstance(dataset, dict) else getattr(dataset, "benchmark", None)
    bench = find_benchmark(given) if isinstance(given, str) else None
    if bench is None or bench.preset is None or data.get("preset"):
        return data
    return {**data, "preset": bench.preset}
