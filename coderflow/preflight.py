"""Checks before any work starts (about a second, no model loaded): each failure is one line naming the input and fix."""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from coderflow.catalog import check_model, check_weights
from coderflow.config import PipelineConfig
from coderflow.storage.layout import Layout, resolve_workdir

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
# CLIP_benchmark's dataset names (its benchmark/datasets.txt, webdatasets.txt, and the torchvision ones it builds), each
# also under vtab/, wds/ and wds_vtab- prefixes: a name that reads as one needs a source (--dataset-root).
CLIP_BENCHMARK_DATASETS = frozenset((
    "imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "imagenet-o", "objectnet", "fer2013",
    "voc2007", "voc2007_multilabel", "sun397", "cars", "fgvc_aircraft", "mnist", "stl10", "gtsrb", "country211",
    "renderedsst2", "caltech101", "cifar10", "cifar100", "clevr_count_all", "clevr_closest_object_distance",
    "diabetic_retinopathy", "dmlab", "dsprites_label_orientation", "dsprites_label_x_position",
    "dsprites_label_y_position", "dtd", "eurosat", "kitti_closest_vehicle_distance", "flowers", "pets", "pcam",
    "resisc45", "smallnorb_label_azimuth", "smallnorb_label_elevation", "svhn", "food101", "mscoco_captions",
    "flickr8k", "flickr30k",
))  # fmt: skip


def _cuda_devices() -> int:
    """NVIDIA GPUs the driver reports (no torch import)."""
    return len(glob.glob("/proc/driver/nvidia/gpus/*")) or len(glob.glob("/dev/nvidia[0-9]*"))


def check_device(device: str) -> None:
    """The torch device exists on this machine: cpu, cuda, cuda:N (that many GPUs) or mps (Apple silicon)."""
    if not _DEVICE.match(device):
        raise ValueError(f"--model.device {device!r}: use cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        n = _cuda_devices()
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            have = f"{n} GPU(s)" if n else "no NVIDIA GPU"
            raise ValueError(f"--model.device {device!r}: this machine has {have}; use --model.device cpu")
    if device == "mps" and sys.platform != "darwin":
        raise ValueError("--model.device 'mps' needs Apple silicon: use --model.device cpu")


def check_source(cfg: PipelineConfig, split: str) -> None:
    """A local source exists (URLs are checked when listed)."""
    src = cfg.dataset.source
    if cfg.dataset.kind == "demo" or not src or "://" in src:
        return
    path = Path(src.replace("{split}", split)).expanduser()
    if not path.exists() and cfg.dataset.benchmark:
        raise ValueError(
            f"benchmark {cfg.dataset.benchmark!r}: {str(path)!r} not found: the mirror {cfg.dataset.benchmark_base!r} "
            f"(--dataset.benchmark-base) needs its root {path.name}/ in CLIP_benchmark's layout"
        )
    if not path.exists():
        what = "an image folder (one subfolder per class) or a CLIP_benchmark root (classnames.txt, <split>/*.tar)"
        where = f" for split {split!r}" if "{split}" in src else ""
        raise ValueError(f"dataset source {str(path)!r}{where} not found (--dataset.source): pass {what}")


def check_benchmark_root(cfg: PipelineConfig) -> None:
    """A `--benchmark` root at a URL (the hub by default) can be read: the hub switched off (HF_HUB_OFFLINE), a base
    that cannot be reached or a root that is not there is one line naming the mirror flag, never a traceback."""
    ds = cfg.dataset
    if not ds.benchmark or "://" not in str(ds.source):
        return
    fix = "or read a mirror of it: --dataset.benchmark-base DIR_OR_URL"
    if str(ds.source).startswith("hf://") and os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    ):
        raise ValueError(
            f"benchmark {ds.benchmark!r}: HF_HUB_OFFLINE is set, so {ds.source} cannot be read: unset it, {fix}"
        )
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(str(ds.source))
        found = fs.exists(f"{path}/classnames.txt")
    except ImportError as exc:  # the file system's package (huggingface_hub for hf://) is missing
        raise ValueError(f"benchmark {ds.benchmark!r}: {ds.source} cannot be read ({exc}): install it, {fix}") from None
    except Exception as exc:  # the network: DNS, refused connections, timeouts, HTTP errors, as each client raises them
        what = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ValueError(
            f"benchmark {ds.benchmark!r}: {ds.source} cannot be read ({what}): check the network, {fix}"
        ) from None
    if not found:
        raise ValueError(
            f"benchmark {ds.benchmark!r}: {ds.source}/classnames.txt not found: the base {ds.benchmark_base} has no "
            f"root in CLIP_benchmark's layout for it; {fix}"
        )


def is_clip_benchmark_name(name: str) -> bool:
    """A CLIP_benchmark dataset name: cifar10, vtab/cifar10, wds/vtab/cifar10, wds_vtab-cifar10."""
    bare = re.sub(r"^(wds[/_])?(vtab[/-])?", "", name.strip().lower())
    return bare in CLIP_BENCHMARK_DATASETS


def check_benchmark_source(cfg: PipelineConfig) -> None:
    """A CLIP_benchmark dataset name with no source (`--dataset cifar10`) is refused unless that name is already
    ingested here: without a source it would be the procedural demo under a benchmark's name."""
    from coderflow.tasks.ingest.checks import stored_identity

    ds = cfg.dataset
    if ds.source or ds.kind != "demo" or not is_clip_benchmark_name(ds.name):
        return
    if stored_identity(Layout.at(cfg.workdir), ds.name) is None:
        raise ValueError(f"dataset {ds.name!r} has no source: give --dataset-root (a CLIP_benchmark root or folder)")


def check_ingested(cfg: PipelineConfig, split: str) -> None:
    """The split was ingested into the work directory (commands that read stored shards); a damaged ingest marker
    is named (DamagedFile)."""
    from coderflow.storage.shards import ingest_info

    layout = Layout.at(cfg.workdir)
    if ingest_info(layout.shard_dir(cfg.dataset.name, split)) is None:
        raise ValueError(
            f"dataset {cfg.dataset.name!r} split {split!r} is not ingested in {layout.root}: run `coderflow ingest "
            f"--dataset.name {cfg.dataset.name} --dataset.source SOURCE --split {split}` first (or `coderflow run`)"
        )


def check_test_classes(cfg: PipelineConfig) -> None:
    """fewshot.test_datasets: every class of each shifted test set is a class of the source, by name (its class list
    only: no image is opened)."""
    targets = cfg.fewshot.target_datasets(cfg.dataset)
    if not targets:
        return
    from coderflow.tasks.fewshot.shift import class_columns
    from coderflow.tasks.ingest.sources import make_source

    source = make_source(cfg.dataset.model_copy(update={"split": cfg.fewshot.test_split})).classnames
    for target in targets:
        class_columns(source, make_source(target).classnames, target.name, cfg.dataset.name)


def check_class_sizes(cfg: PipelineConfig, splits: Sequence[str], shots: Sequence[int] = ()) -> None:
    """An image folder split by --split-ratio: every class has images in each split asked for, and at least the
    smallest K of `shots` in the few-shot train split (counted from the file listing, no image opened)."""
    from coderflow.tasks.ingest.sources import folder_images, ratio_slice

    ds = cfg.dataset
    ratios = ds.split_ratio
    if ds.kind != "folder" or not ratios or not ds.source or "{split}" in ds.source:
        return
    files = folder_images(ds.source)
    shares = ",".join(f"{k}={x:g}" for k, x in ratios.items())
    for split in dict.fromkeys(s for s in splits if s in ratios):
        need = min(shots) if shots and split == cfg.fewshot.train_split else 1
        small = {
            f.name: len(ratio_slice(len(imgs), ratios, split, ds.seed, ci))
            for ci, (f, imgs) in enumerate(files.items())
        }
        small = {name: n for name, n in small.items() if n < need}
        if small:
            names = ", ".join(f"{name!r} ({n})" for name, n in sorted(small.items()))
            what = f"--shots {min(shots)}" if need > 1 else "--split-ratio"
            raise ValueError(
                f"class folder(s) {names} get fewer than {need} image(s) in split {split!r} under --split-ratio {shares}: "
                f"add images to those class folders, give {split!r} a larger share, or lower {what}"
            )


def preflight(
    cfg: PipelineConfig,
    ingests: Sequence[str] = (),
    needs: Sequence[str | None] = (),
    embeds: bool = False,
    shots: Sequence[int] = (),
) -> PipelineConfig:
    """Checks that need no work, in about a second.

    `ingests`: splits the command ingests: the dataset name is not another source's, the splits are not one folder,
    the source exists and can be listed (class list, class folders or shard listing; no image is opened).
    `needs`: splits that must already be ingested (None: the configured split). `embeds`: the command runs the model:
    its name, pretrained tag and device are checked. `shots`: the few-shot K values (a class must have the smallest).
    """
    resolve_workdir(cfg.workdir)  # a URL whose fsspec package is missing fails here, before any work
    if ingests:
        from coderflow.tasks.ingest.checks import (
            check_distinct_splits,
            check_identity,
            check_same_classes,
            check_split_definitions,
        )
        from coderflow.tasks.ingest.sources import make_source

        check_benchmark_source(cfg)
        for split in dict.fromkeys(ingests):
            check_source(cfg, split)
        check_benchmark_root(cfg)  # the hub (or a mirror's URL) offline or unreachable: one line, not a traceback
        check_identity(cfg.dataset, cfg.workdir)  # another source under this dataset name: refused before any work
        check_split_definitions(cfg.dataset, list(ingests), cfg.workdir)  # a stored split quietly re-split: refused
        check_distinct_splits(cfg.dataset, list(ingests))
        check_same_classes(cfg.dataset, list(ingests))  # every split's labels index one class list
        for split in dict.fromkeys(ingests):
            make_source(cfg.dataset.model_copy(update={"split": split}))
        check_class_sizes(cfg, list(ingests), shots)  # a split left empty for a class: refused before re-splitting
    for split in needs:
        check_ingested(cfg, split or cfg.dataset.split)
    if embeds:
        check_model(cfg.model.name, cfg.model.pretrained)
        check_device(cfg.model.device)
        check_weights(cfg.model.name, cfg.model.pretrained)
    return cfg
