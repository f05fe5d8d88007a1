"""Checks around an ingest: sample keys and labels, a dataset name's source, split definitions, source listings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec

from coderflow.config import DatasetConfig
from coderflow.storage.layout import Layout
from coderflow.storage.shards import DamagedFile, ingest_info, label_problem, read_json, sample_error
from coderflow.tasks.ingest.coop import IMAGENET_FOLDERS, coop_listing, is_coop_imagenet, read_coop_split
from coderflow.tasks.ingest.sources import class_folders, folder_images, wds_shard_urls


# checks while ingesting -----------------------------------------------------------------------------------
def check_samples(
    samples: Iterator[dict[str, Any]],
    n_classes: int,
    report: dict[str, Any],
    warn: Callable[[str], None] | None = None,
    max_warnings: int = 20,
) -> Iterator[dict[str, Any]]:
    """Pass samples through, making keys unique and counting problems in `report` (updated in place).

    Duplicate keys (e.g. two source shards that both hold `s0000001`): the first keeps its key, a later one is
    stored as `<key>_dup<n>` with a warning, so no sample is lost and every row of image_embeddings has its own key.
    Labels that are not integers or lie outside [0, n_classes) are counted and warned about here; the embedding
    stage gives those rows status 'error'. Shard-level errors from the source are counted and passed on.
    """
    report.setdefault("duplicate_keys", 0)
    report.setdefault("bad_labels", 0)
    report.setdefault("shard_errors", [])
    seen: set[str] = set()
    said = 0

    def say(message: str) -> None:
        nonlocal said
        said += 1
        if warn is not None and said <= max_warnings:
            warn(message)

    for sample in samples:
        url = sample.pop("__url__", None)
        where = f" (source shard {url})" if url else ""
        key = str(sample["__key__"])
        error = sample_error(sample)
        if error is not None:
            report["shard_errors"].append(error)
            say(error)
        elif (problem := label_problem(sample, n_classes)) is not None:
            report["bad_labels"] += 1
            say(f"sample {key!r}{where}: {problem}")
        if key in seen:
            n = 1
            while f"{key}_dup{n}" in seen:
                n += 1
            report["duplicate_keys"] += 1
            say(f"sample key {key!r}{where} was seen before: stored as {key}_dup{n!s}")
            key = f"{key}_dup{n}"
            sample["__key__"] = key
        seen.add(key)
        yield sample
    if warn is not None and said > max_warnings:
        warn(f"{said - max_warnings} more problems not shown (see the ingest marker and image_embeddings.error)")


# identity and change detection ----------------------------------------------------------------------------
def source_identity(cfg: DatasetConfig) -> dict[str, Any]:
    """What a dataset name stands for: its name as given, kind and source (a local path made absolute)."""
    source = cfg.source
    if source and cfg.kind == "coop":  # one data root holds many CoOp datasets: the dataset's folder is the source
        source = str(Path(source) / str(cfg.coop_dir))
    if source and "://" not in source:
        source = str(Path(source).expanduser().resolve())
    return {"name": cfg.name, "kind": cfg.kind, "source": source.rstrip("/") if source else None}


def identity_conflict(stored: dict[str, Any] | None, cfg: DatasetConfig) -> str | None:
    """Why `cfg` may not be ingested under its dataset name (another name, source or kind owns it), else None."""
    if not stored:
        return None
    now = source_identity(cfg)
    if stored.get("name") != now["name"]:
        return (
            f"dataset name {now['name']!r} uses the same folder as dataset {stored.get('name')!r}: "
            "choose another --dataset name"
        )
    if (stored.get("kind"), stored.get("source")) != (now["kind"], now["source"]):
        was = stored.get("source") or "the built-in demo"
        return (
            f"dataset {now['name']!r} was ingested from {was} ({stored.get('kind')}), not from "
            f"{now['source'] or 'the built-in demo'} ({now['kind']}): pass another --dataset name, or "
            "--replace-dataset to replace it (its splits and embeddings are deleted)"
        )
    return None


def stored_identity(layout: Layout, dataset: str) -> dict[str, Any] | None:
    """The identity recorded by the dataset's last ingest (None for a new name; DamagedFile when it is damaged)."""
    return read_json(layout.dataset_identity(dataset), "dataset identity")


def check_identity(
    cfg: DatasetConfig, workdir: str | None, warn: Callable[[str], None] | None = None
) -> dict[str, Any] | None:
    """Refuse a config that would ingest another source, kind or name into an existing dataset folder (unless
    `replace`); returns the stored identity when `cfg` replaces it, else None. A damaged identity file counts as
    none (`warn` is told; the ingest writes it again)."""
    try:
        stored = stored_identity(Layout.at(workdir), cfg.name)
    except DamagedFile as exc:
        if warn is not None:
            warn(f"{exc.damage}: it is written again by this ingest")
        stored = None
    conflict = identity_conflict(stored, cfg)
    if conflict and not cfg.replace:
        raise ValueError(conflict)
    return stored if conflict else None


def _partition(ratios: dict[str, float] | None, seed: Any) -> str:
    """How a split's images were chosen, in words (the whole folder, or a seeded --split-ratio)."""
    if not ratios:
        return "the whole folder (no --split-ratio)"
    return f"--split-ratio {','.join(f'{k}={v:g}' for k, v in ratios.items())} (seed {seed})"


def split_redefinition(cfg: DatasetConfig, workdir: str | None) -> str | None:
    """Why ingesting `cfg` would quietly redefine a split stored under its dataset name (--split-ratio given,
    changed or dropped, or its seed changed: other images under the same split name, so runs computed on the
    stored split could no longer be re-scored or compared), in one line naming the fix; None when it would not."""
    try:
        done = ingest_info(Layout.at(workdir).shard_dir(cfg.name, cfg.split))
    except DamagedFile:  # taken as not ingested (ingest warns and rebuilds it)
        return None
    old = (done or {}).get("config") or {}
    old_ratios, new_ratios = old.get("split_ratio"), cfg.split_ratio
    if not done or not (old_ratios or new_ratios):
        return None
    same_seed = not new_ratios or old.get("seed") == cfg.seed
    if list((old_ratios or {}).items()) == list((new_ratios or {}).items()) and same_seed:
        return None
    return (
        f"dataset {cfg.name!r} split {cfg.split} holds {_partition(old_ratios, old.get('seed'))}; "
        f"{_partition(new_ratios, cfg.seed)} would redefine it under the same name, and runs computed on it could no "
        "longer be re-scored: pass --replace-dataset to replace it (what was computed from it is deleted), or "
        "another --dataset.name"
    )


def check_split_definitions(cfg: DatasetConfig, splits: list[str], workdir: str | None) -> None:
    """Refuse, before any work, to redefine a stored split of the dataset (see split_redefinition) unless
    `replace` (--replace-dataset) is set."""
    if cfg.replace:
        return
    for split in dict.fromkeys(splits):
        problem = split_redefinition(cfg.model_copy(update={"split": split}), workdir)
        if problem:
            raise ValueError(problem)


def check_distinct_splits(cfg: DatasetConfig, splits: list[str]) -> None:
    """Refuse splits that would read the same images (a folder source without `{split}` and no split_ratio); the
    content check after ingest (storage.shards.split_overlaps) catches copies across folders."""
    if is_coop_imagenet(cfg) and len({IMAGENET_FOLDERS.get(s, s) for s in splits}) < len(set(splits)):
        raise ValueError(
            f"CoOp's ImageNet has no test split of its own: splits {', '.join(splits)} would read images/val/ twice: "
            "search on test as the references do (--fewshot.val-split test, the imagenet preset's default), run it "
            "zero-shot (`coderflow run --split test`), or give its images as a folder split with --split-ratio"
        )
    if cfg.kind != "folder" or "{split}" in str(cfg.source) or cfg.split_ratio or len(set(splits)) < 2:
        return
    raise ValueError(
        f"dataset.source {cfg.source!r} has no {{split}} part, so splits {', '.join(splits)} would all be the same "
        "images (test images in the support set and the search): pass a source with {split} (e.g. "
        f"'/data/pets/{{split}}'), or --split-ratio 0.5,0.2,0.3 to split this one folder"
    )


def check_same_classes(cfg: DatasetConfig, splits: list[str]) -> None:
    """Refuse `{split}` folder sources whose splits have different class folders: a label indexes its own split's
    folder list, but the dataset has one class list (classnames.txt), so a label would name another class."""
    if cfg.kind != "folder" or "{split}" not in str(cfg.source) or len(set(splits)) < 2:
        return
    folders: dict[str, list[str]] = {}
    for split in dict.fromkeys(splits):
        root = Path(str(cfg.source).replace("{split}", split)).expanduser()
        if root.is_dir():  # a missing folder is refused on its own (check_source)
            folders[split] = [f.name for f in class_folders(root)]
    if len({tuple(names) for names in folders.values()}) < 2:
        return
    every = sorted(set().union(*folders.values()))
    differences = []
    for split, names in folders.items():
        missing = [c for c in every if c not in names]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            differences.append(f"{split} lacks {', '.join(map(repr, missing[:5]))}{more}")
    raise ValueError(
        f"dataset.source {cfg.source!r}: the splits have different class folders ({'; '.join(differences)}), so a "
        "label would name another class in each split: give every split the same class folders (each with at least "
        "one image), or put the images in one folder and split it with --split-ratio 0.5,0.2,0.3"
    )


# What tells a file's version, by file system: S3 and web servers' ETag, local and SFTP mtime, S3's LastModified, a
# plain web server's Last-Modified (http.server sends no ETag), the Hugging Face hub's git blob id.
VERSION_KEYS = ("ETag", "etag", "mtime", "LastModified", "Last-Modified", "blob_id")


def _stat_entry(size: int, mtime: float | int | None) -> list[Any]:
    return [int(size), mtime]


def source_listing(cfg: DatasetConfig) -> dict[str, list[Any]]:
    """A cheap fingerprint of what one split's ingest reads: file -> [size, mtime or ETag] (no file is opened).

    Folder: every image under the class folders (relative path) and the classnames file; CLIP_benchmark root: the
    split's shards and the class/template files (size and ETag or modification time, as the file system gives);
    CoOp layout: every image the split file names (path as named) and the split file; demo: its generation settings.
    """
    if cfg.kind == "demo":
        return {"demo": [cfg.demo_images_per_class, cfg.demo_image_size, cfg.seed, cfg.split]}
    if cfg.kind == "coop":  # every image the split file names, and the split file
        split = read_coop_split(
            str(cfg.source), str(cfg.coop_dir), str(cfg.coop_split_file), cfg.coop_image_dir, cfg.split
        )
        return coop_listing(split)
    out: dict[str, list[Any]] = {}
    if cfg.kind == "folder":
        root = Path(str(cfg.source).replace("{split}", cfg.split)).expanduser()
        for files in folder_images(root).values():
            for p in files:
                st = p.stat()
                out[p.relative_to(root).as_posix()] = _stat_entry(st.st_size, st.st_mtime_ns)
        extra = [cfg.classnames_file] if cfg.classnames_file else []
    else:
        root_url = str(cfg.source).rstrip("/")
        extra = [
            cfg.classnames_file or f"{root_url}/classnames.txt",
            cfg.templates_file or f"{root_url}/zeroshot_classification_templates.txt",
            *wds_shard_urls(root_url, cfg.split),
        ]
    for url in extra:
        fs, path = fsspec.core.url_to_fs(str(url))
        try:
            info = fs.info(path)
        except FileNotFoundError:
            continue
        version = next((info[k] for k in VERSION_KEYS if info.get(k)), None)
        out[f"@{url}"] = _stat_entry(info.get("size") or 0, str(version) if version is not None else None)
    return out


def listing_changes(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> str:
    """'6 added, 0 removed, 1 modified' between two source listings."""
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    modified = sum(1 for k in new.keys() & old.keys() if list(new[k]) != list(old[k]))
    return f"{added} added, {removed} removed, {modified} modified"
