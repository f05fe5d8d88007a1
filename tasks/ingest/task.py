"""Prefect task: ingest a dataset into WebDataset shards under the work directory (skipped when unchanged)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from coderflow.config import DatasetConfig
from coderflow.storage.layout import Layout, safe_name
from coderflow.storage.parquet_io import write_text
from coderflow.storage.shards import ingest_info, list_shards, write_split
from coderflow.tasks.ingest.sources import Source, check_samples, demo_source, folder_source, wds_source


def make_source(cfg: DatasetConfig) -> Source:
    """The configured dataset as a Source (class names, templates, lazy samples)."""
    if cfg.kind == "demo":
        return demo_source(cfg.demo_images_per_class, cfg.demo_image_size, cfg.seed, cfg.split)
    if cfg.kind == "folder":
        return folder_source(cfg.source.replace("{split}", cfg.split), cfg.classnames_file)  # one folder per split
    return wds_source(cfg.source, cfg.split, cfg.classnames_file, cfg.templates_file)


@task(name="ingest-split")
def ingest_split(cfg: DatasetConfig, workdir: str) -> dict[str, Any]:
    """Write the dataset split as shards plus classnames.txt/templates.txt; a finished identical ingest is reused."""
    log = get_run_logger()
    layout = Layout.at(workdir)
    shard_dir = layout.shard_dir(cfg.name, cfg.split)
    fingerprint = cfg.model_dump(mode="json")
    done = ingest_info(shard_dir)
    if done and done.get("config") == fingerprint and layout.classnames_file(cfg.name).exists():
        log.info("ingest of %s/%s is up to date (%d samples): skipped", cfg.name, cfg.split, done["samples"])
        return {"shards": [str(p) for p in list_shards(shard_dir)], "samples": done["samples"], "skipped": True}
    source = make_source(cfg)
    write_text("\n".join(source.classnames) + "\n", layout.classnames_file(cfg.name))
    write_text("\n".join(source.templates) + ("\n" if source.templates else ""), layout.templates_file(cfg.name))
    pattern = f"{safe_name(cfg.name)}-{safe_name(cfg.split)}-%06d.tar"
    problems: dict[str, Any] = {}  # filled while the samples stream through, stored in the marker at the end
    samples = check_samples(source.samples, len(source.classnames), problems, warn=log.warning)
    shards = write_split(
        samples, shard_dir, pattern, cfg.samples_per_shard, {"config": fingerprint, **source.info, "problems": problems}
    )
    info = ingest_info(shard_dir) or {}
    log.info("ingested %s/%s: %d samples in %d shards", cfg.name, cfg.split, info.get("samples", 0), len(shards))
    counts = {"duplicate_keys": problems["duplicate_keys"], "bad_labels": problems["bad_labels"]}
    counts["shard_errors"] = len(problems["shard_errors"])
    return {"shards": [str(p) for p in shards], "samples": info.get("samples", 0), "skipped": False, "problems": counts}
