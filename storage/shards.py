"""WebDataset shards: atomic writing of a whole split, listing, reading raw samples, class-list files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from coderflow.storage.atomic import no_space_message, publish_file
from coderflow.storage.layout import (
    HASH_CHARS,
    Layout,
    StoragePath,
    content_id,
    file_sha256,
    is_local,
    shared_mode,
    storage_path,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
INGEST_MARKER = "_ingest.json"
SOURCE_LISTING = "_source.json"  # the split's source listing at ingest time (what changes are compared with)
IMAGE_HASHES = "_images.json"  # content hash of every sample's image bytes, in sample order (split overlap checks)
# A shard-level problem (unreadable, truncated or empty tar) travels as one sample whose key is
# `<shard stem>#shard` and whose only entry is SHARD_ERROR (the message); embedding records it as an error row.
SHARD_ERROR = "shard_error"
SHARD_ERROR_SUFFIX = "#shard"


def write_split(
    samples: Iterable[dict[str, Any]],
    shard_dir: StoragePath,
    pattern_name: str,
    samples_per_shard: int,
    info: dict[str, Any],
    extra_files: dict[str, str] | None = None,
) -> list[StoragePath]:
    """Write samples as tar shards into a fresh folder, then swap it in for `shard_dir` in one rename.

    Each sample is a WebDataset dict: `__key__`, one image entry (bytes, keyed by extension), `cls` (int) and
    `json` (dict). A reader never sees a half-written split; `info` is stored as the ingest marker, with the
    sha256 and sample count of every shard (`shards`), the split's content id (`split_id`, a hash of the shard
    hashes) and, in `_images.json`, the content hash of every sample's image. `extra_files` (name -> text) land in
    the split folder in the same swap. At a URL (s3://, ...) the shards are written locally, then uploaded with
    the marker last: until it lands, the split counts as not ingested.
    """
    import webdataset as wds  # imported where used: the up-to-date check reads markers without it

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard}: use a positive number such as 1000")
    local = is_local(shard_dir)
    if local:
        shard_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in shard_dir.parent.glob(f".{shard_dir.name}.*"):  # a killed ingest's staging (writers hold the
            shutil.rmtree(stale, ignore_errors=True)  # work-directory lock, so none is in use now)
    staging = Path(tempfile.mkdtemp(prefix=f".{shard_dir.name}.", dir=shard_dir.parent if local else None))
    shared_mode(staging, directory=True)  # it becomes the split's folder: the umask's permissions, not 0700
    current = staging  # the file being written (named in a disk-full error)
    writer = None
    try:
        count = 0
        image_hashes: list[str] = []
        for sample in samples:
            if count % samples_per_shard == 0:
                if writer is not None:
                    writer.close()
                # a fixed mtime makes the tar a function of its samples: the same data always has the same hash
                current = staging / (pattern_name % (count // samples_per_shard))
                writer = wds.TarWriter(str(current), mtime=0.0)
            writer.write(sample)
            entry = image_entry(sample)
            if entry is not None:
                image_hashes.append(hashlib.sha256(entry[1]).hexdigest()[:HASH_CHARS])
            count += 1
        if writer is not None:
            writer.close()
            writer = None
        tars = sorted(staging.glob("*.tar"))
        shards = [
            {"name": t.name, "sha256": file_sha256(t), "samples": min(samples_per_shard, count - i * samples_per_shard)}
            for i, t in enumerate(tars)
        ]
        split_id = content_id(*(s["sha256"] for s in shards))
        marker = {**info, "samples": count, "shards": shards, "split_id": split_id}
        texts = {
            **(extra_files or {}),
            IMAGE_HASHES: json.dumps(image_hashes),
            INGEST_MARKER: json.dumps(marker, indent=2),
        }
        for name, text in texts.items():  # the marker last
            current = staging / name
            current.write_text(text, encoding="utf-8")
        (_swap_in if local else _upload)(staging, shard_dir)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        target = shard_dir / current.name if current != staging else shard_dir
        raise OSError(errno.ENOSPC, f"could not write {target}: {no_space_message(current, target)}") from exc
    finally:
        if writer is not None:  # a failed write: close its file now (freeing its space), whatever closing raises
            with contextlib.suppress(OSError, ValueError):
                writer.tarstream.close()
            with contextlib.suppress(OSError, ValueError):
                writer.close()
        shutil.rmtree(staging, ignore_errors=True)
    return list_shards(shard_dir)


def _swap_in(staging: Path, shard_dir: Path) -> None:
    old = None
    if shard_dir.exists():
        old = shard_dir.with_name(f".{shard_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(shard_dir, old)
    os.replace(staging, shard_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _upload(staging: Path, shard_dir: StoragePath) -> None:
    """Replace a split at a URL: drop the old marker, then the old shards, upload the new ones, the marker last."""
    fs, remote = shard_dir.fs, shard_dir.path
    if fs.exists(f"{remote}/{INGEST_MARKER}"):
        fs.rm_file(f"{remote}/{INGEST_MARKER}")
    if fs.exists(remote):
        fs.rm(remote, recursive=True)
    for item in sorted(staging.iterdir()):
        if item.name != INGEST_MARKER:
            publish_file(item, shard_dir / item.name)
    publish_file(staging / INGEST_MARKER, shard_dir / INGEST_MARKER)


class DamagedFile(ValueError):
    """A small JSON file an ingest wrote (marker, source listing, image hashes, dataset identity) that is damaged."""

    def __init__(self, what: str, path: StoragePath, reason: str) -> None:
        self.reason = reason
        self.damage = f"{what} {path} is damaged ({reason})"
        super().__init__(f"{self.damage}: --reingest rebuilds it (`coderflow ingest --reingest` for that split)")


def read_json(path: StoragePath, what: str, kind: type = dict) -> Any:
    """A JSON file an ingest wrote, or None when it does not exist; a truncated or invalid one (or one that holds
    no `kind`) raises DamagedFile, which names the file and says --reingest rebuilds it."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise DamagedFile(what, path, str(exc).split(" (char ")[0]) from None
    if not isinstance(data, kind):
        raise DamagedFile(what, path, f"it holds no JSON {'object' if kind is dict else kind.__name__}")
    return data


def ingest_info(shard_dir: StoragePath) -> dict[str, Any] | None:
    """The marker a finished ingest left in a split folder, or None if the split was never completed (DamagedFile
    when it no longer parses: ingest then takes the split as not ingested)."""
    return read_json(shard_dir / INGEST_MARKER, "ingest marker")


@dataclass(frozen=True)
class ShardRef:
    """One ingested shard: its file and the sha256 of its bytes (what every derived file is keyed by)."""

    name: str
    path: str
    sha256: str
    samples: int


def split_shards(layout: Layout, dataset: str, split: str) -> list[ShardRef]:
    """The shards of an ingested split as its ingest marker lists them, with their content hashes."""
    shard_dir = layout.shard_dir(dataset, split)
    info = ingest_info(shard_dir)
    if info is None:
        raise FileNotFoundError(
            f"split {dataset}/{split} is not ingested in {layout.root}: run `coderflow ingest --dataset {dataset} "
            f"--split {split}` (or `coderflow run`) first"
        )
    if "shards" not in info:
        raise FileNotFoundError(
            f"split {dataset}/{split} was ingested by an older coderflow without content hashes: "
            "run `coderflow ingest --reingest` for it"
        )
    return [ShardRef(s["name"], str(shard_dir / s["name"]), s["sha256"], int(s["samples"])) for s in info["shards"]]


def classes_id(classnames: list[str], templates: list[str]) -> str:
    """Content id of a dataset's class list and templates."""
    return content_id(*classnames, "|", *templates)


def stored_classes_id(layout: Layout, dataset: str) -> str | None:
    """classes_id of the dataset's classnames.txt and templates.txt as they are now (None when not written)."""
    try:
        names = read_class_file(layout.classnames_file(dataset))
        templates = read_class_file(layout.templates_file(dataset), templates=True)
    except ValueError:  # edited by hand into something invalid: differs from any ingest's class list
        return "invalid"
    return None if names is None else classes_id(names, templates or [])


def split_image_hashes(layout: Layout, dataset: str, split: str) -> list[str]:
    """Content hashes of the split's sample images, in sample order (empty for splits ingested without them)."""
    return read_json(layout.shard_dir(dataset, split) / IMAGE_HASHES, "image hash list", list) or []


def split_overlaps(layout: Layout, dataset: str, splits: list[str]) -> list[tuple[str, str, int]]:
    """(split a, split b, number of images with the same content) for every pair of the splits that share any."""
    hashes = {s: set(split_image_hashes(layout, dataset, s)) for s in dict.fromkeys(splits)}
    names = list(hashes)
    return [(a, b, n) for i, a in enumerate(names) for b in names[i + 1 :] if (n := len(hashes[a] & hashes[b]))]


def list_shards(shard_dir: StoragePath) -> list[StoragePath]:
    """The split's tar shards in name order (hidden staging files are never listed)."""
    return sorted(p for p in shard_dir.glob("*.tar") if p.is_file() and not p.name.startswith("."))


def shard_error_sample(name: str, message: str) -> dict[str, Any]:
    """The stand-in sample that reports a problem with a whole shard (see SHARD_ERROR)."""
    stem = Path(name.rstrip("/").rsplit("/", 1)[-1]).name.split(".")[0] or "shard"
    return {"__key__": f"{stem}{SHARD_ERROR_SUFFIX}", SHARD_ERROR: message}


def read_tar_samples(stream: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    """Samples of one tar stream, grouped by key; a truncated, unreadable or empty tar ends with an error sample.

    Every complete sample before the damage is yielded; the error sample names the shard and the last member read,
    so a bad shard never stops the stage and never disappears silently.
    """
    import webdataset as wds

    expander = wds.tariterators.tar_file_expander
    last: dict[str, str | None] = {"fname": None}

    def members() -> Iterator[dict[str, Any]]:
        for member in expander([{"stream": stream, "url": name}]):
            last["fname"] = member.get("fname", last["fname"])
            yield member

    count = 0
    try:
        for sample in wds.tariterators.group_by_keys(members()):
            count += 1
            yield {k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")}
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        reason = str(exc.args[0] if exc.args else type(exc).__name__).split(" @ ")[0]
        where = f"after member {last['fname']!r}" if last["fname"] else "at its start"
        yield shard_error_sample(
            name,
            f"shard {name} is truncated or unreadable {where} ({type(exc).__name__}: {reason}); "
            f"{count} samples before it were kept: re-create the shard (re-run `coderflow ingest`)",
        )
        return
    if count == 0:
        yield shard_error_sample(name, f"shard {name} holds no samples (empty tar)")


def iter_samples(shard: str | StoragePath) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar shard, local or at a URL (bytes values, no decoding), in file order.

    Never raises on a damaged shard: a zero-byte, truncated, corrupt or empty tar yields the samples it can and then
    one shard-error sample (`<shard>#shard`), which the embedding stage stores as a row with status 'error'.
    """
    try:
        f = storage_path(shard).open("rb")  # closed below, after the generator is consumed
    except OSError as exc:
        reason = exc.strerror or str(exc)
        yield shard_error_sample(str(shard), f"shard {shard} cannot be opened ({type(exc).__name__}: {reason})")
        return
    with f:
        yield from read_tar_samples(f, str(shard))


def sample_error(sample: dict[str, Any]) -> str | None:
    """The message of a shard-error sample, else None."""
    raw = sample.get(SHARD_ERROR)
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def image_entry(sample: dict[str, Any]) -> tuple[str, bytes] | None:
    """The (extension, bytes) of a sample's image, or None if it has none."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    return None


def sample_label(sample: dict[str, Any]) -> int | None:
    """The integer class label of a sample, or None when it has none (or it is not an integer)."""
    raw = sample.get("cls")
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        label = int(text.strip())
    except ValueError:
        return None
    return label if -(2**31) <= label < 2**31 else None  # a label column is int32: larger is no class index


def label_problem(sample: dict[str, Any], n_classes: int | None) -> str | None:
    """Why a sample's label is unusable (not an integer, or outside [0, n_classes)), else None.

    A sample without any `cls` entry is fine: it is embedded and predicted, and left out of the metrics.
    """
    raw = sample.get("cls")
    if raw is None:
        return None
    label = sample_label(sample)
    if label is None:
        text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()
        if text.lstrip("+-").isdigit():
            return f"label {text[:40]} is too large for a class index"
        return f"label {text[:40]!r} is not an integer class index"
    if n_classes is not None and not 0 <= label < n_classes:
        return f"label {label} out of range for {n_classes} classes"
    return None


# Characters no class name or template line may hold: controls (tab, form feed, \x1c-\x1f, \x85, ...), the line and
# paragraph separators U+2028/U+2029, and invisible format characters (a BOM, bidi overrides). The zero-width
# (non-)joiners that some scripts and emoji need stay allowed.
_KEPT_FORMAT = frozenset("\u200c\u200d")


def _bad_character(text: str) -> str | None:
    """The first control, line/paragraph separator or invisible format character of `text`, else None."""
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp") or (category == "Cf" and ch not in _KEPT_FORMAT):
            return ch
    return None


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'a control character')})"


def text_lines(text: str, source: str) -> list[str]:
    """The lines of a class or template file: split on '\\n' only (a CRLF's '\\r' dropped), a leading UTF-8 BOM
    removed, each NFC-normalised and stripped. A line that still holds a control, separator or invisible format
    character is refused, naming the file and line: other tools split such a line into two (str.splitlines)."""
    lines = []
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        line = unicodedata.normalize("NFC", raw.removesuffix("\r"))
        bad = _bad_character(line)
        if bad is not None:
            raise ValueError(
                f"{source} line {number}: {line.strip()[:80]!r} holds the character {_describe(bad)}, which splits "
                "a line in two or hides in a name: remove it (one name per line, each line ending with a newline)"
            )
        lines.append(line.strip())
    return lines


def read_class_file(path: str | StoragePath, templates: bool = False) -> list[str] | None:
    """The one reader of class lists and template files (a source's, or the work directory's classnames.txt and
    templates.txt), local or at any fsspec URL; None when the file does not exist.

    Lines as `text_lines` reads them. A class list keeps blank lines inside (dropping one would shift every later
    class index), drops trailing ones and is checked by `validate_classnames`; templates lose every blank line.
    """
    p = storage_path(path)
    if not p.exists():
        return None
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): save it as UTF-8") from None
    lines = text_lines(text, str(path))
    if templates:
        return [line for line in lines if line]
    while lines and not lines[-1]:
        lines.pop()
    return validate_classnames(lines, str(path))


def validate_classnames(names: list[str], source: str) -> list[str]:
    """The names NFC-normalised; an empty name, a duplicate (after normalisation) or a name holding a control or
    separator character is refused, naming the offending entry."""
    if not names:
        raise ValueError(f"{source}: the class list is empty; give one class name per line")
    names = [unicodedata.normalize("NFC", name) for name in names]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise ValueError(f"{source}: class {i} has an empty name (line {i + 1}); give every class a name")
        bad = _bad_character(name)
        if bad is not None or name.splitlines() != [name]:
            what = "a line separator" if name.splitlines() != [name] else f"the character {_describe(str(bad))}"
            raise ValueError(
                f"{source}: class {i} name {name!r} contains {what}, which would split it into two classes or hide "
                "in it: rename it (folder) or fix the line"
            )
        if name in seen:
            raise ValueError(f"{source}: class name {name!r} appears twice (lines {seen[name] + 1} and {i + 1})")
        seen[name] = i
    return names
