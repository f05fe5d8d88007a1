"""Dataset sources as plain sample iterators: the procedural demo, an image folder, CLIP_benchmark shards, CoOp."""

from __future__ import annotations

import io
import math
import posixpath
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from PIL import Image, ImageDraw

from coderflow.config import DatasetConfig
from coderflow.storage.shards import (
    IMAGE_EXTENSIONS,
    read_class_file,
    read_tar_samples,
    sample_label,
    shard_error_sample,
    validate_classnames,
)
from coderflow.tasks.ingest.coop import coop_samples, read_coop_split

DEMO_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "diamond",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "dots",
)


@dataclass
class Source:
    """A dataset ready to be written as shards: class names, templates (may be empty) and its samples."""

    classnames: list[str]
    templates: list[str]
    samples: Iterator[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


# demo ---------------------------------------------------------------------------------------------------
def _draw_demo(class_index: int, rng: np.random.Generator, size: int) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(255 - v for v in bg)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    c = size / 2 + rng.uniform(-size / 8, size / 8, 2)
    r = size * rng.uniform(0.2, 0.35)
    name = DEMO_CLASSES[class_index]
    if name == "circle":
        d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fg)
    elif name == "square":
        d.rectangle([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fg)
    elif name == "triangle":
        d.polygon([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], fill=fg)
    elif name == "cross":
        w = r / 3
        d.rectangle([c[0] - r, c[1] - w, c[0] + r, c[1] + w], fill=fg)
        d.rectangle([c[0] - w, c[1] - r, c[0] + w, c[1] + r], fill=fg)
    elif name == "ring":
        d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=fg, width=max(2, int(r / 4)))
    elif name == "diamond":
        d.polygon([(c[0], c[1] - r), (c[0] + r, c[1]), (c[0], c[1] + r), (c[0] - r, c[1])], fill=fg)
    elif name in ("horizontal stripes", "vertical stripes"):
        step = int(rng.integers(6, 14))
        for k in range(0, size, 2 * step):
            box = [0, k, size, k + step] if name.startswith("h") else [k, 0, k + step, size]
            d.rectangle(box, fill=fg)
    elif name == "checkerboard":
        step = int(rng.integers(8, 20))
        for i in range(0, size, step):
            for j in range(0, size, step):
                if (i // step + j // step) % 2 == 0:
                    d.rectangle([i, j, i + step, j + step], fill=fg)
    else:  # dots
        for _ in range(int(rng.integers(6, 14))):
            x, y = rng.uniform(0, size, 2)
            s = size * rng.uniform(0.03, 0.06)
            d.ellipse([x - s, y - s, x + s, y + s], fill=fg)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (size, size, 3)).astype(np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img.rotate(float(rng.uniform(-math.pi, math.pi) * 10), fillcolor=bg)


def demo_source(images_per_class: int = 20, image_size: int = 64, seed: int = 0, split: str = "test") -> Source:
    """The built-in demo: procedural shape and texture images, generated offline, deterministic per (seed, split)."""
    if images_per_class < 1:
        raise ValueError(f"images_per_class={images_per_class}: use at least 1")

    def samples() -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        for i in range(images_per_class * len(DEMO_CLASSES)):
            ci = i % len(DEMO_CLASSES)
            buf = io.BytesIO()
            _draw_demo(ci, rng, image_size).save(buf, format="PNG")
            yield {
                "__key__": f"demo-{split}-{i:06d}",
                "png": buf.getvalue(),
                "cls": ci,
                "json": {"class_name": DEMO_CLASSES[ci]},
            }

    info = {
        "kind": "demo",
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
        "split": split,
    }
    return Source(list(DEMO_CLASSES), [], samples(), info)


# image folder -------------------------------------------------------------------------------------------
def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def class_folders(root: str | Path) -> list[Path]:
    """The class sub-folders of an image folder, sorted by name (hidden ones skipped); no image is listed."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset.source: dataset folder {str(root)!r} does not exist: pass a folder with one sub-folder per class"
        )
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_images(root: str | Path) -> dict[Path, list[Path]]:
    """Class sub-folders of an image folder (sorted, hidden ones skipped) and the image files under each."""
    return {f: sorted(p for p in f.rglob("*") if _is_image(p)) for f in class_folders(root)}


def ratio_slice(n: int, ratios: dict[str, float], split: str, seed: int, class_index: int) -> list[int]:
    """Indices of one class's n items that fall into `split` under a seeded, stratified split by `ratios`.

    The class's items are shuffled with (seed, class_index); split k takes the items between the rounded
    cumulative shares of the splits before it and up to it (in the order the ratios are given), so the splits are
    disjoint and cover every item.
    """
    names = list(ratios)
    if split not in ratios:
        raise ValueError(f"dataset.split_ratio has no share for split {split!r}: give one for each of {names}")
    total = sum(ratios.values())
    bounds = np.round(np.cumsum([0.0, *(ratios[k] / total for k in names)]) * n).astype(int)
    k = names.index(split)
    order = np.random.default_rng([seed, class_index]).permutation(n)
    return sorted(order[bounds[k] : bounds[k + 1]].tolist())


def folder_source(
    root: str | Path,
    classnames_file: str | Path | None = None,
    split: str | None = None,
    split_ratio: dict[str, float] | None = None,
    seed: int = 0,
) -> Source:
    """An image folder with one sub-folder per class (class name = folder name, or from a classnames file).

    With a classnames file, line i names class i and sub-folders are matched to lines in sorted order of the
    folder names. Image bytes are stored as they are; decoding (and recording unreadable files) happens later.
    With `split_ratio` (split -> share), only `split`'s part of each class is taken (see ratio_slice).
    """
    root = Path(root).expanduser()
    files = folder_images(root)
    folders = list(files)
    if not folders:
        raise ValueError(
            f"dataset folder {str(root)!r} has no class sub-folders: put each class's images in root/<class>/"
        )
    for f, imgs in files.items():
        if not imgs:
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise ValueError(f"class folder {str(f)!r} has no images ({exts}): add images or remove the folder")
    if classnames_file is not None:
        if not Path(classnames_file).is_file():
            raise FileNotFoundError(
                f"dataset.classnames_file: {str(classnames_file)!r} not found: pass a file with one class name per line"
            )
        names = read_class_file(str(classnames_file)) or []
        if len(names) != len(folders):
            raise ValueError(
                f"classnames file {str(classnames_file)!r} has {len(names)} names for {len(folders)} class folders: "
                "give one line per sub-folder, in sorted folder order"
            )
    else:
        names = validate_classnames([f.name.replace("_", " ") for f in folders], str(root))
    if split_ratio:
        files = {
            f: [imgs[i] for i in ratio_slice(len(imgs), split_ratio, str(split), seed, ci)]
            for ci, (f, imgs) in enumerate(files.items())
        }

    def samples() -> Iterator[dict[str, Any]]:
        i = 0
        for ci, f in enumerate(folders):
            for p in files[f]:
                ext = p.suffix.lower().lstrip(".")
                yield {
                    "__key__": f"s{i:08d}",
                    ext: p.read_bytes(),
                    "cls": ci,
                    "json": {"path": str(p.relative_to(root)), "class_name": names[ci]},
                }
                i += 1

    info = {"kind": "folder", "root": str(root), "images": sum(len(v) for v in files.values())}
    if split_ratio:
        info["split_ratio"] = {"ratios": split_ratio, "seed": seed, "split": split}
    return Source(names, [], samples(), info)


# CLIP_benchmark WebDataset layout ------------------------------------------------------------------------
def wds_shard_urls(root: str, split: str) -> list[str]:
    """Shard URLs of a CLIP_benchmark-style dataset: `<root>/<split>/nshards.txt` or a listing of `*.tar`.

    A count in nshards.txt must match the shards that exist (0.tar ... N-1.tar in the listing; over HTTP, where
    there is none, the last one must exist): a wrong count is refused before any shard is read.
    """
    fs, base = fsspec.core.url_to_fs(root)
    split_dir = posixpath.join(base, split)
    nshards = posixpath.join(split_dir, "nshards.txt")
    counted = fs.exists(nshards)
    web = {"http", "https"} & _protocols(fs)
    listed: list[str] | None = None
    if not (counted and web):  # a web page's links are no reliable listing: nshards.txt is what a web root has
        try:
            listed = sorted(p for p in fs.ls(split_dir, detail=False) if p.endswith(".tar"))
        except (FileNotFoundError, NotImplementedError):
            listed = None
    if counted:
        names = _counted_shards(fs, nshards, split_dir, listed)
    elif listed is None:
        raise FileNotFoundError(
            f"no shards under {root!r} for split {split!r}: expected {split}/nshards.txt or {split}/*.tar"
        )
    else:
        names = listed
    if not names:
        raise FileNotFoundError(
            f"no .tar shards in {root}/{split}: expected CLIP_benchmark's layout <root>/<split>/N.tar"
        )
    return [fs.unstrip_protocol(n) for n in names]


def _protocols(fs: Any) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, tuple | list) else [fs.protocol])


def _counted_shards(fs: Any, nshards: str, split_dir: str, listed: list[str] | None) -> list[str]:
    """The shards nshards.txt counts, refused (naming the file) when the count is no number or does not match the
    shards that exist."""
    shown = (lambda p: p) if "file" in _protocols(fs) else fs.unstrip_protocol  # a local path as the user gave it
    url = shown(nshards)
    text = fs.cat_file(nshards).decode("utf-8", "replace").strip()
    if not text.isdecimal():
        raise ValueError(f"{url} holds {text[:40]!r}, not a number of shards: write the count, or delete it")
    n = int(text)
    if listed is not None:
        have = {posixpath.basename(p) for p in listed}
        if len(have) != n or have != {f"{i}.tar" for i in range(n)}:  # the count first: it may be huge
            named = "" if len(have) != n else f", not named 0.tar ... {n - 1}.tar"
            raise ValueError(
                f"{url} says {n:,} shards, but {shown(split_dir)} holds {len(have):,} .tar files{named}: "
                "correct the count (or the shard names), or delete nshards.txt to use the folder's listing"
            )
    elif n and not fs.exists(last := posixpath.join(split_dir, f"{n - 1}.tar")):
        raise ValueError(f"{url} says {n:,} shards, but shard {shown(last)} does not exist: correct it")
    return [posixpath.join(split_dir, f"{i}.tar") for i in range(n)]


def wds_source(root: str, split: str, classnames_file: str | None = None, templates_file: str | None = None) -> Source:
    """A CLIP_benchmark WebDataset dataset (local path or any fsspec/http URL): samples re-keyed per shard order."""
    root = root.rstrip("/")
    names = read_class_file(classnames_file or f"{root}/classnames.txt")
    if names is None:
        raise FileNotFoundError(
            f"dataset.source: {classnames_file or root + '/classnames.txt'} not found: "
            "pass dataset.classnames_file with one class name per line"
        )
    templates = read_class_file(templates_file or f"{root}/zeroshot_classification_templates.txt", templates=True)
    templates = templates or []
    urls = wds_shard_urls(root, split)

    def samples() -> Iterator[dict[str, Any]]:
        for url in urls:  # grouped per shard: samples never merge across a shard boundary
            try:
                f = fsspec.open(url, "rb").open()
            except OSError as exc:
                yield shard_error_sample(url, f"source shard {url} cannot be opened ({type(exc).__name__}: {exc})")
                continue
            with f:
                for sample in read_tar_samples(f, url):
                    yield {**sample, "__url__": url}

    info = {"kind": "wds", "root": root, "split": split, "shards": len(urls)}
    return Source(names, templates, samples(), info)


def make_source(cfg: DatasetConfig) -> Source:
    """The configured dataset as a Source (class names, templates, lazy samples), restricted to `class_subset`
    classes when set."""
    source = _whole_source(cfg)
    return source if cfg.class_subset is None else subset_classes(source, cfg.class_subset, cfg.seed)


def subset_classes(source: Source, k: int, seed: int) -> Source:
    """The first k classes of one seeded permutation of the source's classes (so subsets of one seed are nested),
    kept in the source's class order and renumbered 0..k-1; samples of other classes are dropped."""
    n = len(source.classnames)
    if k > n:
        raise ValueError(f"dataset.class_subset={k}: the source has {n} classes: give at most {n}")
    keep = sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())
    label_of = {old: new for new, old in enumerate(keep)}

    def samples() -> Iterator[dict[str, Any]]:
        for s in source.samples:
            label = sample_label(s)
            if label is None:  # an unreadable or unlabelled sample: kept, ingest records its problem as before
                yield s
            elif label in label_of:
                yield {**s, "cls": label_of[label]}

    info = {**source.info, "class_subset": k, "classes_kept": keep}
    return Source([source.classnames[i] for i in keep], source.templates, samples(), info)


def _whole_source(cfg: DatasetConfig) -> Source:
    if cfg.kind == "demo":
        return demo_source(cfg.demo_images_per_class, cfg.demo_image_size, cfg.seed, cfg.split)
    if cfg.kind == "folder":  # one folder per split, or one folder split by ratio
        return folder_source(
            cfg.source.replace("{split}", cfg.split), cfg.classnames_file, cfg.split, cfg.split_ratio, cfg.seed
        )
    if cfg.kind == "coop":
        return coop_source(cfg)
    return wds_source(cfg.source, cfg.split, cfg.classnames_file, cfg.templates_file)


# CoOp layout ---------------------------------------------------------------------------------------------
def coop_source(cfg: DatasetConfig) -> Source:
    """A dataset in CoOp's layout (dataset.source: the data root; coop_dir, coop_split_file, coop_image_dir: the
    dataset's folder, split file and image folder): the split's images in split-file order (tasks/ingest/coop.py)."""
    split = read_coop_split(str(cfg.source), str(cfg.coop_dir), str(cfg.coop_split_file), cfg.coop_image_dir, cfg.split)
    info = {"kind": "coop", "root": str(cfg.source), "split_file": str(split.split_file), "images": len(split.paths)}
    return Source(split.classnames, [], coop_samples(split), info)
