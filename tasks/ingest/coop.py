"""CoOp's dataset layout: a data root with one folder per dataset, its splits named by a split file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coderflow.storage.shards import IMAGE_EXTENSIONS

# CoOp's ImageNet (KaiyangZhou/CoOp datasets/imagenet.py): train/ and val/ class folders, val is also the test set
IMAGENET_FOLDERS = {"train": "train", "val": "val", "test": "val"}


@dataclass(frozen=True)
class CoopSplit:
    """One split of a CoOp dataset: class names (by label), the images' paths as the split file names them (relative
    to `image_dir`), their labels, and the files it was read from."""

    classnames: list[str]
    paths: list[str]
    labels: list[int]
    image_dir: Path
    split_file: Path


def coop_folders(root: str | Path, coop_dir: str, split_file: str, image_dir: str) -> tuple[Path, Path, Path]:
    """(dataset folder, split file, image folder) of a CoOp dataset under the data root; a missing one is refused."""
    root = Path(root).expanduser()
    folder = root / coop_dir
    if not folder.is_dir():
        raise FileNotFoundError(
            f"dataset.coop_dir: {str(folder)!r} does not exist: put the dataset under the data root as CoOp's "
            "DATASETS.md lays it out, or pass --dataset.coop-dir"
        )
    return folder, folder / split_file, folder / image_dir


def _names_by_label(pairs: dict[int, str], where: Path) -> list[str]:
    """Class names ordered by label (CoOp DatasetBase.get_lab2cname); labels must be 0..C-1."""
    missing = sorted(set(range(max(pairs) + 1)) - set(pairs)) if pairs else []
    if missing or not pairs:
        raise ValueError(f"{where}: labels {missing[:5] or 'none'} have no images: labels must run from 0 to C-1")
    return [pairs[i].replace("_", " ") for i in range(len(pairs))]


def _json_split(path: Path, split: str) -> tuple[list[str], list[str], list[int]]:
    """CoOp's split_zhou_*.json ({"train": [[impath, label, classname], ...], "val": ..., "test": ...}), read as
    OxfordPets.read_split reads it; class names come from all its splits."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"split file {str(path)!r} is not valid JSON ({exc}): download it again") from None
    if not isinstance(data, dict) or split not in data:
        have = ", ".join(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"split file {str(path)!r} has no split {split!r} (it has {have}): pick one with --split")
    pairs: dict[int, str] = {}
    for items in data.values():
        for _impath, label, classname in items:
            if pairs.setdefault(int(label), str(classname)) != str(classname):
                raise ValueError(f"{path}: label {label} names both {pairs[int(label)]!r} and {classname!r}")
    rows = data[split]
    return _names_by_label(pairs, path), [str(r[0]) for r in rows], [int(r[1]) for r in rows]


def _variant_split(folder: Path, split_file: str, split: str) -> tuple[list[str], list[str], list[int]]:
    """FGVC-Aircraft as CoOp reads it (datasets/fgvc_aircraft.py): variants.txt names the classes in label order,
    images_variant_<split>.txt holds '<image id> <class name>' lines (the image is <id>.jpg)."""
    variants = folder / "variants.txt"
    path = folder / split_file.replace("{split}", split)
    for needed in (variants, path):
        if not needed.is_file():
            raise FileNotFoundError(f"{str(needed)!r} not found: CoOp's FGVC-Aircraft layout has it (DATASETS.md)")
    names = [line.strip() for line in variants.read_text(encoding="utf-8").splitlines() if line.strip()]
    label_of = {c: i for i, c in enumerate(names)}
    paths, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(" ")
        name = " ".join(parts[1:])
        if name not in label_of:
            raise ValueError(f"{path}: class {name!r} is not in {variants}")
        paths.append(parts[0] + ".jpg")
        labels.append(label_of[name])
    return [n.replace("_", " ") for n in names], paths, labels


def _imagenet_split(
    folder: Path, image_dir: Path, split_file: str, split: str
) -> tuple[list[str], list[str], list[int]]:
    """ImageNet as the references read it: class folders of images/<train|val>/ in sorted order (torchvision
    ImageFolder in CODER and Tip-Adapter datasets/imagenet.py; CoOp sorts the folders too), class names from
    classnames.txt ('<folder> <class name>' lines, CoOp's DATASETS.md); val is also the test set."""
    if split not in IMAGENET_FOLDERS:
        raise ValueError(
            f"CoOp's ImageNet has splits {', '.join(IMAGENET_FOLDERS)}, not {split!r}: pick one with --split"
        )
    names_file = folder / split_file
    if not names_file.is_file():
        raise FileNotFoundError(f"{str(names_file)!r} not found: CoOp's DATASETS.md says where to get classnames.txt")
    named = {}
    for line in names_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, *words = line.strip().split(" ")
            named[wnid] = " ".join(words)
    base = image_dir / IMAGENET_FOLDERS[split]
    if not base.is_dir():
        raise FileNotFoundError(f"{str(base)!r} does not exist: CoOp's ImageNet keeps images/train/ and images/val/")
    folders = sorted(p.name for p in base.iterdir() if p.is_dir())
    unnamed = [f for f in folders if f not in named]
    if unnamed:
        raise ValueError(f"{names_file} names no class for folder(s) {', '.join(unnamed[:5])}: use CoOp's file")
    paths, labels = [], []
    for label, wnid in enumerate(folders):
        for p in sorted((base / wnid).iterdir()):
            if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                paths.append(f"{IMAGENET_FOLDERS[split]}/{wnid}/{p.name}")
                labels.append(label)
    return [named[f] for f in folders], paths, labels


def is_coop_imagenet(cfg: Any) -> bool:
    """A CoOp-layout dataset configuration that reads ImageNet's class folders (split file classnames.txt)."""
    name = str(getattr(cfg, "coop_split_file", None) or "")
    return getattr(cfg, "kind", None) == "coop" and name.endswith(".txt") and "{split}" not in name


def read_coop_split(root: str | Path, coop_dir: str, split_file: str, image_dir: str, split: str) -> CoopSplit:
    """One split of a CoOp dataset, in the order its split file lists it (the order the references sample from).

    `split_file`: a split_zhou_*.json; 'images_variant_{split}.txt' (FGVC-Aircraft); or classnames.txt (ImageNet's
    class folders). Every image it names must exist (a missing one is refused, naming the first few)."""
    folder, path, images = coop_folders(root, coop_dir, split_file.replace("{split}", split), image_dir)
    if "{split}" in split_file:
        names, paths, labels = _variant_split(folder, split_file, split)
    elif split_file.endswith(".txt"):
        names, paths, labels = _imagenet_split(folder, images, split_file, split)
    elif not path.is_file():
        raise FileNotFoundError(
            f"dataset.coop_split_file: {str(path)!r} not found: download it as CoOp's DATASETS.md says"
        )
    else:
        names, paths, labels = _json_split(path, split)
    bad = [lab for lab in labels if not 0 <= lab < len(names)]
    if bad:
        raise ValueError(f"{path}: labels {bad[:5]} lie outside 0..{len(names) - 1}")
    missing = [p for p in paths if not (images / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) of split {split!r} named by {path} are not under {images} (e.g. "
            f"{', '.join(missing[:3])}): complete the dataset as CoOp's DATASETS.md lays it out"
        )
    return CoopSplit(names, paths, labels, images, path)


def coop_samples(split: CoopSplit) -> Iterator[dict[str, Any]]:
    """The split's images as samples keyed s00000000.. in split-file order, each with its path as the split file
    names it (`json.path`) and its class name."""
    for i, (rel, label) in enumerate(zip(split.paths, split.labels, strict=True)):
        p = split.image_dir / rel
        yield {
            "__key__": f"s{i:08d}",
            p.suffix.lower().lstrip(".") or "jpg": p.read_bytes(),
            "cls": label,
            "json": {"path": rel, "class_name": split.classnames[label]},
        }


def coop_listing(split: CoopSplit) -> dict[str, list[Any]]:
    """What an ingest of the split reads: each image (path as named) -> [size, mtime_ns], and the split file."""
    out: dict[str, list[Any]] = {}
    for rel in split.paths:
        st = (split.image_dir / rel).stat()
        out[rel] = [int(st.st_size), st.st_mtime_ns]
    if split.split_file.is_file():
        st = split.split_file.stat()
        out[f"@{split.split_file}"] = [int(st.st_size), st.st_mtime_ns]
    return out
