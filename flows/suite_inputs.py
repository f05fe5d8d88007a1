"""Up-to-date checks of suite cells (no Prefect, no torch): the stored run of a cell whose inputs are those it has now.

A zero-shot cell is a `pipeline` run: its inputs fingerprint is the one `coderflow run` checks (flows/uptodate.py),
computed with the text bank of the run compared with rather than the dataset's newest bank, so that the cells of one
dataset and model with different banks each find their own run. A few-shot cell is a `few-shot` run: after it
completes, the fingerprint of its inputs (config, code, model, each split's source, shards and image embeddings, the
augmented support split, the text bank and its text embeddings) is stored in its manifest under `fewshot_inputs`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coderflow.config import DatasetConfig, PipelineConfig
from coderflow.flows.uptodate import INPUTS_KEY, MANIFEST, TEXT_FILES_KEY, file_listing, input_parts
from coderflow.storage.atomic import write_text
from coderflow.storage.layout import Layout, StoragePath
from coderflow.storage.shards import DamagedFile, ingest_info
from coderflow.suite_config import Cell
from coderflow.tasks.ingest.checks import source_listing

FEWSHOT_INPUTS_KEY = "fewshot_inputs"  # manifest key of a few-shot run's inputs fingerprint (same shape as `inputs`)
RESULT_FILES = ("predictions.parquet", "metrics.parquet")


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def fingerprint(parts: dict[str, Any]) -> dict[str, Any]:
    """{"fingerprint", "parts": {part: sha256}, text_embedding_files} of input parts, as the manifests store them."""
    return {
        "fingerprint": digest(parts),
        "parts": {name: digest(value) for name, value in parts.items()},
        TEXT_FILES_KEY: parts.get("text_embeddings", []),
    }


def same_inputs(stored: dict[str, Any], now: dict[str, Any]) -> bool:
    """Equal fingerprints, or only text-embedding parts added since (other datasets' texts: see flows/uptodate.py)."""
    if stored.get("fingerprint") == now["fingerprint"]:
        return True
    old = stored.get("parts") or {}
    changed = [name for name, value in now["parts"].items() if old.get(name) != value]
    recorded = stored.get(TEXT_FILES_KEY)
    if changed != ["text_embeddings"] or not isinstance(recorded, list):
        return False
    current = {tuple(f) for f in now[TEXT_FILES_KEY]}
    return all(isinstance(f, list) and tuple(f) in current for f in recorded)


def _completed(layout: Layout, flow: str, key: str, config_digest: str) -> list[dict[str, Any]]:
    """Manifests of completed `flow` runs with results whose stored config part is `config_digest`, newest first."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in layout.runs_dir.glob(f"*/{MANIFEST}") if layout.runs_dir.is_dir() else []:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        stored = manifest.get(key)
        if manifest.get("flow") != flow or manifest.get("status") != "completed" or not isinstance(stored, dict):
            continue
        if (stored.get("parts") or {}).get("config") != config_digest:
            continue
        if all(layout.run_file(str(manifest["run_id"]), f).is_file() for f in RESULT_FILES):
            found.append((str(manifest.get("finished_at") or manifest.get("started_at") or ""), manifest))
    return [m for _, m in sorted(found, key=lambda x: x[0], reverse=True)]


def zeroshot_run(cfg: PipelineConfig) -> str | None:
    """The newest completed `pipeline` run with the config and inputs `cfg` has now (its bank's), else None."""
    layout = Layout.at(cfg.workdir)
    parts = input_parts(cfg)
    if parts is None:
        return None
    checked: dict[str | None, dict[str, Any] | None] = {}
    for manifest in _completed(layout, "pipeline", INPUTS_KEY, digest(parts["config"])):
        bank = manifest.get("textbank_id")
        if bank not in checked:
            own = input_parts(cfg, bank)
            checked[bank] = fingerprint(own) if own is not None else None
        now = checked[bank]
        if now is not None and same_inputs(manifest[INPUTS_KEY], now):
            return str(manifest["run_id"])
    return None


def _listing(workdir: StoragePath, folder: StoragePath, pattern: str) -> list[list[Any]]:
    return file_listing(workdir, folder.glob(pattern)) if folder.is_dir() else []


def fewshot_parts(cfg: PipelineConfig, textbank_id: str | None, support_split: str) -> dict[str, Any] | None:
    """What a few-shot run's results depend on: the zero-shot parts of its test split (with its bank), and for the
    train, val and augmented support splits their source, ingest, shards and image embeddings (plain and adapted)."""
    from coderflow.tasks.embed.model import configured_model_id  # torch-free until a model loads

    fs = cfg.fewshot
    test = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"split": fs.test_split})})
    parts = input_parts(test, textbank_id)
    if parts is None:
        return None
    parts.pop("coder", None)  # the few-shot flow reads no CODER files
    layout = Layout.at(cfg.workdir)
    root = layout.root
    original = cfg.model.model_copy(update={"adapter": None})
    mids = sorted({configured_model_id(m, str(root)) for m in (original, cfg.model)})
    for split in dict.fromkeys((fs.train_split, fs.val_split, fs.test_split, support_split)):
        ds = cfg.dataset.model_copy(update={"split": split})
        parts[f"split:{split}"] = _split_part(layout, ds, mids, listed=split in (fs.train_split, fs.val_split))
    for target in fs.target_datasets(cfg.dataset):  # distribution shift: each shifted test set as it is now
        parts[f"target:{target.name}"] = _split_part(layout, target, mids, listed=True)
    return parts


def _split_part(layout: Layout, ds: DatasetConfig, mids: list[str], listed: bool) -> dict[str, Any]:
    """One split's part of a few-shot fingerprint: its source listing (`listed`), ingest marker, shards and image
    embeddings of each model id."""
    root = layout.root
    shard_dir = layout.shard_dir(ds.name, ds.split)
    try:
        marker = ingest_info(shard_dir) or {}
    except DamagedFile:
        marker = {"damaged": True}
    source: Any = None
    if listed:
        try:
            source = source_listing(ds)
        except Exception as exc:  # a vanished source: the run will say what is wrong
            source = f"unavailable: {exc}"
    return {
        "source": source,
        "data": [marker.get("split_id"), marker.get("classes_id"), marker.get("damaged")],
        "shards": _listing(root, shard_dir, "*.tar"),
        "image_embeddings": [
            _listing(root, layout.image_embedding_dir(mid, ds.name, ds.split), "*.parquet") for mid in mids
        ],
    }


def fewshot_config_digest(cfg: PipelineConfig) -> str | None:
    parts = input_parts(
        cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"split": cfg.fewshot.test_split})})
    )
    return digest(parts["config"]) if parts is not None else None


def record_fewshot_inputs(run_id: str, cfg: PipelineConfig) -> bool:
    """Store the fingerprint of a completed few-shot run's inputs in its manifest; False where it cannot be told."""
    path = Layout.at(cfg.workdir).run_file(run_id, MANIFEST)
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    parts = fewshot_parts(cfg, manifest.get("textbank_id"), manifest.get("support_split") or cfg.fewshot.train_split)
    if parts is None:
        return False
    manifest[FEWSHOT_INPUTS_KEY] = fingerprint(parts)
    write_text(json.dumps(manifest, indent=2, default=str), path)
    return True


def fewshot_run(cfg: PipelineConfig) -> str | None:
    """The newest completed few-shot run with the config and inputs `cfg` has now, else None."""
    config = fewshot_config_digest(cfg)
    if config is None:
        return None
    for manifest in _completed(Layout.at(cfg.workdir), "few-shot", FEWSHOT_INPUTS_KEY, config):
        support = manifest.get("support_split") or cfg.fewshot.train_split
        parts = fewshot_parts(cfg, manifest.get("textbank_id"), support)
        if parts is not None and same_inputs(manifest[FEWSHOT_INPUTS_KEY], fingerprint(parts)):
            return str(manifest["run_id"])
    return None


def source_vanished(cfg: PipelineConfig) -> bool:
    """A local source that no longer exists under a dataset name already ingested here: its cells run and fail (and
    are recorded so), while a source that was never there is a mistake refused before any work."""
    from coderflow.tasks.ingest.checks import stored_identity

    src = cfg.dataset.source
    if cfg.dataset.kind == "demo" or not src or "://" in src or Path(src.split("{split}")[0]).expanduser().exists():
        return False
    return stored_identity(Layout.at(cfg.workdir), cfg.dataset.name) is not None


def cell_splits(cfg: PipelineConfig, kind: str) -> list[str]:
    """The splits a cell ingests: the dataset's split (zero-shot), or train, val and test (few-shot)."""
    fs = cfg.fewshot
    return [fs.train_split, fs.val_split, fs.test_split] if kind == "fewshot" else [cfg.dataset.split]


def check_cells(cells: Sequence[Cell]) -> None:
    """The checks `coderflow run` makes before work (coderflow/preflight.py), once per dataset and model of the suite;
    an error names the cell. A dataset whose local source vanished after it was ingested is left to its cells."""
    from coderflow.preflight import preflight

    done: set[tuple[str, str, str]] = set()
    for cell in cells:
        cfg = cell.config
        key = (cfg.dataset.model_dump_json(), cfg.model.model_dump_json(), cell.kind)
        if key in done or source_vanished(cfg):
            continue
        done.add(key)
        shots = cfg.fewshot.shots if cell.kind == "fewshot" else ()
        try:
            preflight(cfg, ingests=cell_splits(cfg, cell.kind), embeds=True, shots=shots)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"suite cell {cell.dataset} x {cell.model} ({cell.kind}): {exc}") from None
