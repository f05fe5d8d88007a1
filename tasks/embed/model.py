"""Loading open_clip models by name + pretrained tag, hub id or checkpoint file, through one code path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coderflow.catalog import check_model
from coderflow.config import ModelConfig
from coderflow.storage.layout import (
    ADAPTER_PREFIX,
    Layout,
    StoragePath,
    adapted_model_id,
    is_weights_file,
    model_id,
    resolve_path,
    storage_path,
    with_precision,
)

if TYPE_CHECKING:  # torch and open_clip load where a model is used: model ids and config checks need neither
    import torch

_LOCK = threading.Lock()
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class LoadedModel:
    """An open_clip model with its eval preprocess and tokenizer."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    model_id: str
    device: torch.device
    precision: str = "fp32"  # bf16 / fp16: image and text encoding run under torch.autocast

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def preprocess_config(self) -> dict[str, Any]:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def check_model_name(name: str) -> None:
    """Refuse a name open_clip does not know, suggesting close ones (coderflow/catalog.py)."""
    check_model(name, None)


@contextmanager
def _random_weights_said_once(pretrained: str | None) -> Iterator[None]:
    """open_clip warns 'No pretrained weights loaded' on every load; coderflow's run summary already says so."""

    def drop(record: logging.LogRecord) -> bool:
        return pretrained is not None or "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def create_model(name: str, pretrained: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """A fresh (uncached) open_clip model and its eval preprocess: the one place weights are loaded."""
    import open_clip
    import torch

    check_model_name(name)
    weights = str(Path(pretrained).expanduser().resolve()) if is_weights_file(pretrained) else pretrained
    try:
        # random weights come from a fixed seed, so `<name>__random` is one model in every process and run
        with torch.random.fork_rng(devices=[]), _random_weights_said_once(pretrained):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, device=device)
    except Exception as exc:  # open_clip raises RuntimeError, torch.load UnpicklingError/OSError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"could not load weights {pretrained!r} for {name!r}: {reason}. Use a tag from "
            "open_clip.list_pretrained_tags_by_model(name), a hub id, or a checkpoint file path"
        ) from exc
    return model, preprocess


def read_adapter(path: str | StoragePath) -> dict[str, Any]:
    """An adapter file: {'adapter_id', 'base_model_id', 'bottleneck', 'scale', 'dropout', 'state_dict', ...}."""
    p = storage_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"adapter file {str(p)!r} not found: train one with `coderflow adapter train`")
    import torch

    with p.open("rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


@lru_cache(maxsize=4)
def _load(name: str, pretrained: str | None, device: str, precision: str, adapter: str | None = None) -> LoadedModel:
    import open_clip
    import torch

    model, preprocess = create_model(name, pretrained, device)  # fp32 weights; bf16/fp16 run under autocast
    base = model_id(name, pretrained)
    mid = with_precision(base, precision)
    if adapter is not None:
        from coderflow.tasks.embed.adapters import add_adapters, load_adapters

        payload = read_adapter(adapter)
        if payload["base_model_id"] != base:
            raise ValueError(
                f"adapter {payload['adapter_id']} was trained on {payload['base_model_id']}, not {base}: "
                "use it with that model, or train one for this model"
            )
        add_adapters(model, payload["bottleneck"], payload["scale"], payload.get("dropout", 0.1))
        load_adapters(model, payload["state_dict"])
        model.to(device)
        mid = adapted_model_id(mid, payload["adapter_id"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model, preprocess, tokenizer, mid, torch.device(device), precision)


def load_model(
    name: str, pretrained: str | None = None, device: str = "cpu", precision: str = "fp32", adapter: str | None = None
) -> LoadedModel:
    """Load (once per process) an open_clip model; `pretrained` is None (random), a tag, a hub id or a file.

    `adapter` is an adapter file (trained by tasks/adapter): its bottleneck adapters (tasks/embed/adapters.py) are
    added to the image encoder.
    """
    with _LOCK:
        return _load(name, pretrained or None, device, precision, str(adapter) if adapter else None)


def adapter_path(model: ModelConfig, workdir: str) -> StoragePath | None:
    """The file of the configured adapter: a path or URL as given, or an id looked up in the work directory."""
    if not model.adapter:
        return None
    if model.adapter.startswith(ADAPTER_PREFIX) and not Path(model.adapter).is_file():
        return Layout.at(workdir).adapter_file(model_id(model.name, model.pretrained), model.adapter)
    return resolve_path(model.adapter)


def load_configured(model: ModelConfig, workdir: str) -> LoadedModel:
    """Load the model a ModelConfig names (with its adapter, if any)."""
    return load_model(model.name, model.pretrained, model.device, model.precision, adapter_path(model, workdir))


def configured_model_id(model: ModelConfig, workdir: str) -> str:
    """The model id of a ModelConfig without loading the model (adapter files are read for their id)."""
    path = adapter_path(model, workdir)
    adapter = None if path is None else read_adapter(path)["adapter_id"]
    return adapted_model_id(with_precision(model_id(model.name, model.pretrained), model.precision), adapter)
