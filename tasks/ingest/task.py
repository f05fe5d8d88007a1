"""Prefect task: ingest a dataset split into WebDataset shards (skipped when its source and config are unchanged)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task

from coderflow.config import DatasetConfig
from coderflow.results import IngestResult
from coderflow.storage.atomic import write_text_if_changed
from coderflow.storage.layout import HASH_CHARS, Layout, is_local, part_hash, safe_name
from coderflow.storage.shards import (
    SOURCE_LISTING,
    DamagedFile,
    classes_id,
    ingest_info,
    read_json,
    split_shards,
    stored_classes_id,
    write_split,
)
from coderflow.tasks.ingest.checks import (
    check_identity,
    check_samples,
    listing_changes,
    source_identity,
    source_listing,
    split_redefinition,
)
from coderflow.tasks.ingest.sources import make_source


def reingest_reason(
    cfg: DatasetConfig, layout: Layout, listing: dict[str, list[Any]], warn: Callable[[str], None] | None = None
) -> str | None:
    """Why the split must be ingested (again), or None when its shards still match the source and config.

    A damaged ingest marker or source listing counts as a split not ingested (`warn` is told which file)."""
    shard_dir = layout.shard_dir(cfg.name, cfg.split)
    try:
        done = ingest_info(shard_dir)
        old_listing = read_json(shard_dir / SOURCE_LISTING, "source listing") or {}
    except DamagedFile as exc:
        if warn is not None:
            warn(f"{exc.damage}: ingesting the split again")
        return "a damaged ingest file"
    if done is None:
        return "not ingested yet"
    if cfg.reingest:
        return "re-ingest requested"
    if "shards" not in done:
        return "ingested by an older coderflow without content hashes"
    if done.get("config") != cfg.fingerprint():
        old = done.get("config") or {}
        keys = sorted(k for k, v in cfg.fingerprint().items() if old.get(k) != v)
        return f"dataset settings changed ({', '.join(keys) or 'format'})"
    if old_listing != listing:
        return f"source changed: {listing_changes(old_listing, listing)}"
    if stored_classes_id(layout, cfg.name) != done.get("classes_id"):
        return "the class list or templates on disk differ from the ones ingested with these shards"
    return None


def _remove(path: Any) -> None:
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.fs.rm(path.path, recursive=True)


@task(name="ingest-split", task_run_name="ingest-split {cfg.name}/{cfg.split}")
def ingest_split(cfg: DatasetConfig, workdir: str) -> IngestResult:
    """Write the split as shards plus classnames.txt/templates.txt, unless its source and config are unchanged.

    Every shard is recorded with its sha256; derived files (image embeddings, CODER vectors) of shards that are no
    longer in the split are deleted, and the log says how many. Another source under the same dataset name is
    refused unless `replace` is set (then the whole dataset and everything derived from it is deleted first).
    """
    log = get_run_logger()
    layout = Layout.at(workdir)
    identity = source_identity(cfg)
    previous = check_identity(cfg, workdir, log.warning)  # the replaced dataset's identity, or None
    if previous is not None:
        stale = layout.derived_files(cfg.name)
        for path in stale:
            path.unlink()
        _remove(layout.dataset_dir(cfg.name))
        log.warning(
            "replaced dataset %s (was %s): deleted its shards and %d derived files",
            cfg.name, previous.get("source") or previous.get("kind"), len(stale),
        )  # fmt: skip
    redefined = split_redefinition(cfg, workdir)  # a stored split re-split: only with --replace-dataset
    if redefined and not cfg.replace:
        raise ValueError(redefined)
    if redefined:
        log.warning("%s: replacing the split (--replace-dataset)", redefined.split(";")[0])
    shard_dir = layout.shard_dir(cfg.name, cfg.split)
    source = make_source(cfg)  # reads the class list and finds the images or shards (samples are read lazily)
    listing = source_listing(cfg)
    reason = reingest_reason(cfg, layout, listing, log.warning)
    if reason is None:
        shards = split_shards(layout, cfg.name, cfg.split)
        samples = sum(s.samples for s in shards)
        log.info("ingest of %s/%s is up to date (%d samples, source unchanged): skipped", cfg.name, cfg.split, samples)
        info = ingest_info(shard_dir) or {}
        return IngestResult(samples, [s.path for s in shards], skipped=True, split_id=info["split_id"])
    log.info("ingesting %s/%s: %s", cfg.name, cfg.split, reason)
    problems: dict[str, Any] = {}  # filled while the samples stream through, stored in the marker at the end
    samples = check_samples(source.samples, len(source.classnames), problems, warn=log.warning)
    info = {
        "config": cfg.fingerprint(),
        **source.info,
        "problems": problems,
        "classes_id": classes_id(source.classnames, source.templates),
    }
    pattern = f"{safe_name(cfg.name)}-{safe_name(cfg.split)}-%06d.tar"
    extra = {SOURCE_LISTING: json.dumps(listing, sort_keys=True)}
    write_split(samples, shard_dir, pattern, cfg.samples_per_shard, info, extra)
    # the class list follows the shards: a kill in between leaves a classes_id mismatch, which re-ingests next time
    write_text_if_changed("\n".join(source.classnames) + "\n", layout.classnames_file(cfg.name))
    templates = "\n".join(source.templates) + ("\n" if source.templates else "")
    write_text_if_changed(templates, layout.templates_file(cfg.name))
    write_text_if_changed(json.dumps(identity, indent=2), layout.dataset_identity(cfg.name))
    shards = split_shards(layout, cfg.name, cfg.split)
    current = {s.sha256[:HASH_CHARS] for s in shards}
    stale = [p for p in layout.derived_files(cfg.name, cfg.split) if part_hash(p) not in current]
    for path in stale:
        path.unlink()
    if stale:
        log.warning(
            "%s/%s changed: invalidated %d derived files (image embeddings, CODER vectors) of its old shards",
            cfg.name, cfg.split, len(stale),
        )  # fmt: skip
    marker = ingest_info(shard_dir) or {}
    total = marker.get("samples", 0)
    log.info("ingested %s/%s: %d samples in %d shards", cfg.name, cfg.split, total, len(shards))
    counts = {"duplicate_keys": problems["duplicate_keys"], "bad_labels": problems["bad_labels"]}
    counts["shard_errors"] = len(problems["shard_errors"])
    return IngestResult(
        total, [s.path for s in shards], skipped=False, split_id=marker["split_id"], problems=counts,
        invalidated=len(stale), reason=reason,
    )  # fmt: skip
