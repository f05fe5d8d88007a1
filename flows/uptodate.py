"""Up-to-date check of end-to-end runs: a fingerprint of everything a pipeline result depends on (no Prefect, no torch).

A completed `pipeline` run stores the fingerprint of its inputs in its manifest.json (key `inputs`). Before the CLI
starts the pipeline again it computes the fingerprint of the same config over the work directory as it is now; when
the newest run of the same dataset, split and model that stored one has the same, that run's results are still valid
and nothing needs to run (runs of other datasets in the same work directory are not compared with).

The fingerprint covers: the pipeline config (all of it except `workdir` and one-off actions such as
`dataset.reingest`), the versions of coderflow and its main dependencies and the git commit, the model id (a
checkpoint file is hashed into it; an adapter file is listed), the dataset's source as it is now (folder: image paths,
sizes, mtimes; CLIP_benchmark root: shard sizes and ETags/mtimes), the split's content (shard hashes and class list
recorded at ingest, the class files' content now), the shard files, the image-embedding parts, the text bank (id,
file, report), the text-embedding parts of the text model and the CODER parts. Derived files count by relative name,
size and mtime_ns, so touching or rewriting one changes it; class files count by content. Text-embedding parts added
since a run (another dataset's texts: parts are only ever added) leave that run up to date.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coderflow.config import PipelineConfig
from coderflow.storage.atomic import write_text
from coderflow.storage.layout import Layout, StoragePath, text_model_id
from coderflow.storage.runs import versions
from coderflow.storage.shards import DamagedFile, ingest_info, stored_classes_id
from coderflow.tasks.ingest.checks import source_listing

MANIFEST = "manifest.json"
INPUTS_KEY = "inputs"  # manifest key holding {"fingerprint": sha256, "parts": {name: sha256}, TEXT_FILES_KEY: [...]}
# The text-embedding parts of a model are shared by every dataset and only ever added to (a text embedded once is
# never embedded again): parts added since a run (another dataset's texts) leave its texts' embeddings as they were.
TEXT_FILES_KEY = "text_embedding_files"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _name(workdir: StoragePath, path: StoragePath) -> str:
    return path.relative_to(workdir).as_posix() if path.is_relative_to(workdir) else str(path)


def file_listing(workdir: StoragePath, paths: Iterable[StoragePath]) -> list[list[Any]]:
    """[relative name, size, mtime_ns] of each existing, non-hidden file (hidden ones are atomic-write temp files).

    At a URL the modification time is the object store's (S3 LastModified: whole seconds).
    """
    out = []
    for path in paths:
        if path.name.startswith(".") or not path.is_file():
            continue
        st = path.stat()
        mtime_ns = st.st_mtime_ns if hasattr(st, "st_mtime_ns") else int(st.st_mtime * 1e9)
        out.append([_name(workdir, path), st.st_size, mtime_ns])
    return sorted(out)


def _files(workdir: StoragePath, folder: StoragePath, pattern: str) -> list[list[Any]]:
    return file_listing(workdir, folder.glob(pattern)) if folder.is_dir() else []


def input_parts(cfg: PipelineConfig, bank: str | None = None) -> dict[str, Any] | None:
    """What the pipeline's result depends on, by part; None where it cannot be told (missing adapter file, a text
    bank whose LLM requests partly failed and would be asked again). `bank`: the text bank of the run compared with
    (default: the dataset's newest, which a run just made)."""
    from coderflow.tasks.embed.model import adapter_path, configured_model_id  # torch-free until a model loads

    layout = Layout.at(cfg.workdir)
    workdir = layout.root
    ds = cfg.dataset
    try:
        mid = configured_model_id(cfg.model, str(workdir))
    except FileNotFoundError:
        return None
    adapter = adapter_path(cfg.model, str(workdir))
    alias = layout.textbank_alias(ds.name)
    if bank is None:
        bank = alias.read_text().strip() if alias.is_file() else None
    bank_files: list[StoragePath] = []
    if bank:
        report = layout.textbank_report(bank)
        generator = json.loads(report.read_text()).get("generator") if report.is_file() else None
        if isinstance(generator, dict) and generator.get("failures"):
            return None
        bank_files = [layout.textbank_file(bank), report]
    shard_dir = layout.shard_dir(ds.name, ds.split)
    config = cfg.model_dump(mode="json")
    config.pop("workdir", None)
    config["model"].pop("decode_workers", None)  # how images are decoded, not what is computed
    config["dataset"] = ds.fingerprint()
    try:
        marker = ingest_info(shard_dir) or {}
    except DamagedFile:  # changed since any run: the run ingests the split again
        marker = {"damaged": True}
    try:
        source: Any = source_listing(ds)
    except Exception as exc:  # a missing or unreachable source (as each fsspec client raises it): the run will say so
        source = f"unavailable: {exc}"
    return {
        "config": config,
        "code": versions(),
        "model": {"model_id": mid, "adapter": file_listing(workdir, [adapter]) if adapter else None},
        "source": source,
        "data": {"split_id": marker.get("split_id"), "classes_id": marker.get("classes_id")},
        "classes": stored_classes_id(layout, ds.name),
        "shards": _files(workdir, shard_dir, "*.tar"),
        "image_embeddings": _files(workdir, layout.image_embedding_dir(mid, ds.name, ds.split), "*.parquet"),
        "textbank": {"id": bank, "files": file_listing(workdir, bank_files)},
        "text_embeddings": _files(workdir, layout.text_embedding_dir(text_model_id(mid)), "part-*.parquet"),
        "coder": _files(workdir, layout.coder_dir(mid, bank, ds.name, ds.split), "*.parquet") if bank else [],
    }


def inputs_fingerprint(cfg: PipelineConfig, bank: str | None = None) -> dict[str, Any] | None:
    """{"fingerprint": sha256 of all parts, "parts": {part: sha256}}, or None where it cannot be told."""
    parts = input_parts(cfg, bank)
    if parts is None:
        return None
    return {
        "fingerprint": _digest(parts),
        "parts": {name: _digest(value) for name, value in parts.items()},
        TEXT_FILES_KEY: parts["text_embeddings"],
    }


def record_inputs(run_id: str, cfg: PipelineConfig) -> str | None:
    """Store the fingerprint of `cfg`'s inputs in the completed run's manifest.json; returns it (or None)."""
    inputs = inputs_fingerprint(cfg)
    path = Layout.at(cfg.workdir).run_file(run_id, MANIFEST)
    if inputs is None or not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    manifest[INPUTS_KEY] = inputs
    write_text(json.dumps(manifest, indent=2, default=str), path)
    return inputs["fingerprint"]


@dataclass(frozen=True)
class Verdict:
    """The newest completed run that recorded its inputs, and which parts of the inputs changed since."""

    run_id: str | None = None
    finished_at: datetime | None = None
    changed: tuple[str, ...] = ()

    @property
    def up_to_date(self) -> bool:
        return self.run_id is not None and not self.changed


def _when(manifest: dict[str, Any]) -> datetime | None:
    value = manifest.get("finished_at") or manifest.get("started_at")
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def run_key(manifest: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(dataset name, split, model id) of a recorded run: only a run with the same key can have the same inputs."""
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    return dataset.get("name", manifest.get("dataset")), dataset.get("split"), manifest.get("model_id")


def newest_recorded_run(layout: Layout, key: tuple[Any, Any, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of the newest completed run that stored an inputs fingerprint (pipeline runs), or None; with
    `key` (dataset name, split, model id) only among the runs of that dataset, split and model."""
    runs_dir = layout.runs_dir
    if not runs_dir.is_dir():
        return None
    best: tuple[datetime, dict[str, Any]] | None = None
    for path in runs_dir.glob(f"*/{MANIFEST}"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        when = _when(manifest)
        inputs = manifest.get(INPUTS_KEY)
        if manifest.get("status") != "completed" or not isinstance(inputs, dict) or when is None:
            continue
        if key is not None and run_key(manifest) != key:
            continue
        if best is None or when > best[0]:
            best = (when, manifest)
    return best[1] if best else None


def check_inputs(cfg: PipelineConfig) -> Verdict:
    """Whether the newest recorded run of the same dataset, split and model has the inputs `cfg` would have now (its
    results would not change); runs of other datasets in the work directory are not compared with."""
    from coderflow.tasks.embed.model import configured_model_id  # torch-free until a model loads

    layout = Layout.at(cfg.workdir)
    try:
        mid = configured_model_id(cfg.model, str(layout.root))
    except FileNotFoundError:
        return Verdict()
    manifest = newest_recorded_run(layout, (cfg.dataset.name, cfg.dataset.split, mid))
    if manifest is None:
        return Verdict()
    run_id, when = str(manifest["run_id"]), _when(manifest)
    if not all(layout.run_file(run_id, name).is_file() for name in ("predictions.parquet", "metrics.parquet")):
        return Verdict(run_id, when, ("results of that run are missing",))
    now = inputs_fingerprint(cfg)
    if now is None:
        return Verdict(run_id, when, ("cannot be checked: missing adapter or failed LLM requests",))
    stored = manifest[INPUTS_KEY]
    if stored.get("fingerprint") == now["fingerprint"]:
        return Verdict(run_id, when)
    old = stored.get("parts") or {}
    changed = tuple(name for name, digest in now["parts"].items() if old.get(name) != digest)
    recorded = stored.get(TEXT_FILES_KEY)
    if changed == ("text_embeddings",) and isinstance(recorded, list):
        current = {tuple(f) for f in now[TEXT_FILES_KEY]}
        if all(isinstance(f, list) and tuple(f) in current for f in recorded):  # only parts were added
            return Verdict(run_id, when)
    return Verdict(run_id, when, changed or ("(fingerprint)",))
