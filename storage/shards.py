"""WebDataset shards: atomic writing of a whole split, listing, reading raw samples, class-list files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
INGEST_MARKER = "_ingest.json"


def write_split(
    samples: Iterable[dict[str, Any]],
    shard_dir: Path,
    pattern_name: str,
    samples_per_shard: int,
    info: dict[str, Any],
) -> list[Path]:
    """Write samples as tar shards into a fresh folder, then swap it in for `shard_dir` in one rename.

    Each sample is a WebDataset dict: `__key__`, one image entry (bytes, keyed by extension), `cls` (int) and
    `json` (dict). A reader never sees a half-written split; `info` is stored as the ingest marker.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard}: use a positive number such as 1000")
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{shard_dir.name}.", dir=shard_dir.parent))
    try:
        count = 0
        writer = None
        for sample in samples:
            if count % samples_per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = wds.TarWriter(str(staging / (pattern_name % (count // samples_per_shard))))
            writer.write(sample)
            count += 1
        if writer is not None:
            writer.close()
        (staging / INGEST_MARKER).write_text(json.dumps({**info, "samples": count}, indent=2))
        old = None
        if shard_dir.exists():
            old = shard_dir.with_name(f".{shard_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(shard_dir, old)
        os.replace(staging, shard_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list_shards(shard_dir)


def ingest_info(shard_dir: Path) -> dict[str, Any] | None:
    """The marker a finished ingest left in a split folder, or None if the split was never completed."""
    marker = shard_dir / INGEST_MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def list_shards(shard_dir: Path) -> list[Path]:
    return sorted(p for p in shard_dir.glob("*.tar") if p.is_file())


def iter_samples(shard: str | Path) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar shard (bytes values, no decoding), in file order."""
    dataset = wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)
    yield from dataset


def image_entry(sample: dict[str, Any]) -> tuple[str, bytes] | None:
    """The (extension, bytes) of a sample's image, or None if it has none."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    return None


def sample_label(sample: dict[str, Any]) -> int | None:
    raw = sample.get("cls")
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a small text file (classnames.txt, templates.txt)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def validate_classnames(names: list[str], source: str) -> list[str]:
    """Refuse empty or duplicated class names, naming the offending entry."""
    if not names:
        raise ValueError(f"{source}: the class list is empty; give one class name per line")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise ValueError(f"{source}: class {i} has an empty name; give every class a name")
        if name in seen:
            raise ValueError(f"{source}: class name {name!r} appears twice (lines {seen[name] + 1} and {i + 1})")
        seen[name] = i
    return names
