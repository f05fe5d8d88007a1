"""Checks before any work starts (about a second, no model loaded): each failure is one line naming the input and fix."""

from __future__ import annotations

import ast
import glob
import importlib.util
import os
import re
import socket
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from coderflow.config import PipelineConfig
from coderflow.storage.layout import Layout, is_weights_file, resolve_workdir

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


def _open_clip_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("open_clip is not installed: pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def open_clip_models() -> frozenset[str]:
    """open_clip's architecture names (its model_configs/*.json, what list_models() returns), without importing it."""
    return frozenset(p.stem for p in (_open_clip_dir() / "model_configs").glob("*.json"))


@cache
def open_clip_pretrained() -> dict[str, frozenset[str]]:
    """Architecture -> pretrained tags, read from open_clip/pretrained.py's `_PRETRAINED` table without importing
    open_clip (4 s of torch and timm); empty when the file no longer has that shape (the check is then skipped)."""
    try:
        tree = ast.parse((_open_clip_dir() / "pretrained.py").read_text())
    except (OSError, SyntaxError):
        return {}
    tables: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            tables[node.targets[0].id] = node.value

    def tags(value: ast.expr | None) -> frozenset[str]:
        if isinstance(value, ast.Name):
            value = tables.get(value.id)
        if isinstance(value, ast.Call):
            return frozenset(k.arg for k in value.keywords if k.arg)
        if isinstance(value, ast.Dict):
            return frozenset(k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
        return frozenset()

    table = tables.get("_PRETRAINED")
    if not isinstance(table, ast.Dict):
        return {}
    out = {k.value: tags(v) for k, v in zip(table.keys, table.values, strict=True) if isinstance(k, ast.Constant)}
    return out | {f"{k}-quickgelu": v for k, v in out.items()}  # open_clip adds the quick-gelu twins at import


def check_model(name: str, pretrained: str | None) -> None:
    """The architecture is open_clip's (or an hf-hub: id); the pretrained tag is known for it, or names a file."""
    if name.startswith("hf-hub:"):
        return
    models = open_clip_models()
    if name not in models and "open_clip" in sys.modules:  # configs registered at run time (add_model_config)
        models = models | frozenset(sys.modules["open_clip"].list_models())
    if name not in models:
        close = sorted(m for m in models if name.lower().replace("_", "-") in m.lower())[:5]
        hint = f" (close: {', '.join(close)})" if close else " such as ViT-B-32 or ViT-S-32-alt"
        raise ValueError(f"unknown open_clip model {name!r} (--model.name): pick one of open_clip.list_models(){hint}")
    if not pretrained or pretrained.startswith("hf-hub:") or is_weights_file(pretrained):
        return
    if any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        raise ValueError(f"--pretrained {pretrained!r}: no such checkpoint file; pass an existing file or a tag")
    known = open_clip_pretrained()
    tags = known.get(name)
    if known and pretrained.lower().replace("-", "_") not in {t.lower().replace("-", "_") for t in tags or ()}:
        offer = f"its tags: {', '.join(sorted(tags))}" if tags else "it has no pretrained tags; pass a checkpoint file"
        raise ValueError(f"--pretrained {pretrained!r} is not an open_clip tag of {name} ({offer})")


@cache
def _pretrained_table() -> dict[str, dict[str, dict[str, str]]]:
    """Architecture -> tag -> {'url': ..., 'hf_hub': ...} from open_clip/pretrained.py, read without importing it."""
    try:
        tree = ast.parse((_open_clip_dir() / "pretrained.py").read_text())
    except (OSError, SyntaxError):
        return {}
    tables = {
        n.targets[0].id: n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
    }

    def entries(value: ast.expr | None) -> dict[str, dict[str, str]]:
        if isinstance(value, ast.Name):
            value = tables.get(value.id)
        pairs = []
        if isinstance(value, ast.Call):
            pairs = [(k.arg, k.value) for k in value.keywords if k.arg]
        elif isinstance(value, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(value.keys, value.values, strict=True) if isinstance(k, ast.Constant)]
        out = {}
        for tag, call in pairs:
            if isinstance(call, ast.Call):
                out[str(tag)] = {
                    k.arg: k.value.value
                    for k in call.keywords
                    if k.arg in ("url", "hf_hub") and isinstance(k.value, ast.Constant) and k.value.value
                }
        return out

    table = tables.get("_PRETRAINED")
    if not isinstance(table, ast.Dict):
        return {}
    out = {k.value: entries(v) for k, v in zip(table.keys, table.values, strict=True) if isinstance(k, ast.Constant)}
    return out | {f"{k}-quickgelu": v for k, v in out.items()}


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def weights_cached(name: str, pretrained: str) -> bool | None:
    """Whether open_clip's weights file for the tag is already on disk (Hugging Face hub cache or open_clip's URL
    cache ~/.cache/clip); None when the tag's source cannot be told (then nothing is refused)."""
    entry = _pretrained_table().get(name, {}).get(pretrained) or _pretrained_table().get(name, {}).get(
        pretrained.lower().replace("-", "_")
    )
    if not entry:
        return None
    if entry.get("url") and (Path("~/.cache/clip").expanduser() / os.path.basename(entry["url"])).is_file():
        return True
    if entry.get("hf_hub"):
        repo, filename = os.path.split(entry["hf_hub"])
        names = [filename] if filename else ["open_clip_pytorch_model.bin"]
        names += [f"{Path(n).stem}.safetensors" for n in names] + ["open_clip_model.safetensors"]
        snapshots = _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
        if any(next(snapshots.glob(f"*/{n}"), None) for n in names):
            return True
    return False


def _unreachable(host: str = "huggingface.co") -> str | None:
    """Why the weights cannot be downloaded now (HF_HUB_OFFLINE, no connection within 3 s), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc.strerror or exc}"
    return None


def check_weights(name: str, pretrained: str | None) -> None:
    """A pretrained tag whose weights are neither cached nor downloadable now: refused before any work."""
    if not pretrained or pretrained.startswith("hf-hub:") or is_weights_file(pretrained):
        return
    if weights_cached(name, pretrained) is not False:
        return
    why = _unreachable()
    if why:
        raise ValueError(
            f"--pretrained {pretrained!r}: the {name} weights are not in the cache ({_hf_cache()}) and {why}: "
            "connect to the network once to download them (HF_HUB_OFFLINE=1 reads only the cache), or pass a local "
            "checkpoint file (--pretrained /path/to/weights.pt)"
        )


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
    if not path.exists():
        what = "an image folder (one subfolder per class) or a CLIP_benchmark root (classnames.txt, <split>/*.tar)"
        where = f" for split {split!r}" if "{split}" in src else ""
        raise ValueError(f"dataset source {str(path)!r}{where} not found (--dataset.source): pass {what}")


def is_clip_benchmark_name(name: str) -> bool:
    """A CLIP_benchmark dataset name: cifar10, vtab/cifar10, wds/vtab/cifar10, wds_vtab-cifar10."""
    bare = re.sub(r"^(wds[/_])?(vtab[/-])?", "", name.strip().lower())
    return bare in CLIP_BENCHMARK_DATASETS


def check_benchmark_source(cfg: PipelineConfig) -> None:
    """A CLIP_benchmark dataset name with no source (`--dataset cifar10`) is refused unless that name is already
    ingested here: without a source it would be the procedural demo under a benchmark's name."""
    from coderflow.tasks.ingest.sources import stored_identity

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
        from coderflow.tasks.ingest.sources import (
            check_distinct_splits,
            check_identity,
            check_same_classes,
            check_split_definitions,
            make_source,
        )

        check_benchmark_source(cfg)
        for split in dict.fromkeys(ingests):
            check_source(cfg, split)
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
