"""Checks before any work starts (about a second, no model loaded): each failure is one line naming the input and fix."""

from __future__ import annotations

import ast
import glob
import importlib.util
import re
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from coderflow.config import PipelineConfig
from coderflow.storage.layout import Layout, is_weights_file, resolve_workdir

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


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


def preflight(
    cfg: PipelineConfig, ingests: Sequence[str] = (), needs: Sequence[str | None] = (), embeds: bool = False
) -> PipelineConfig:
    """Checks that need no work, in about a second.

    `ingests`: splits the command ingests: the dataset name is not another source's, the splits are not one folder,
    the source exists and can be listed (class list, class folders or shard listing; no image is opened).
    `needs`: splits that must already be ingested (None: the configured split). `embeds`: the command runs the model:
    its name, pretrained tag and device are checked.
    """
    resolve_workdir(cfg.workdir)  # a URL whose fsspec package is missing fails here, before any work
    if ingests:
        from coderflow.tasks.ingest.sources import (
            check_distinct_splits,
            check_identity,
            check_same_classes,
            make_source,
        )

        for split in dict.fromkeys(ingests):
            check_source(cfg, split)
        check_identity(cfg.dataset, cfg.workdir)  # another source under this dataset name: refused before any work
        check_distinct_splits(cfg.dataset, list(ingests))
        check_same_classes(cfg.dataset, list(ingests))  # every split's labels index one class list
        for split in dict.fromkeys(ingests):
            make_source(cfg.dataset.model_copy(update={"split": split}))
    for split in needs:
        check_ingested(cfg, split or cfg.dataset.split)
    if embeds:
        check_model(cfg.model.name, cfg.model.pretrained)
        check_device(cfg.model.device)
    return cfg
