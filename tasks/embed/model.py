"""Loading open_clip models by name + pretrained tag, hub id or checkpoint file, through one code path."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import open_clip
import torch

from coderflow.storage.layout import is_weights_file, model_id

_LOCK = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    """An open_clip model with its eval preprocess and tokenizer."""

    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    model_id: str
    device: torch.device

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def preprocess_config(self) -> dict[str, Any]:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _check_name(name: str) -> None:
    if name.startswith("hf-hub:") or name in open_clip.list_models():
        return
    close = [m for m in open_clip.list_models() if name.lower().replace("_", "-") in m.lower()][:5]
    hint = f" (close: {', '.join(close)})" if close else " such as ViT-B-32 or ViT-S-32-alt"
    raise ValueError(f"unknown open_clip model {name!r}: pick a name from open_clip.list_models(){hint}")


@lru_cache(maxsize=4)
def _load(name: str, pretrained: str | None, device: str, precision: str) -> LoadedModel:
    _check_name(name)
    weights = str(Path(pretrained).expanduser().resolve()) if is_weights_file(pretrained) else pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=device, precision=precision
        )
    except Exception as exc:  # open_clip raises RuntimeError, torch.load UnpicklingError/OSError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"could not load weights {pretrained!r} for {name!r}: {reason}. Use a tag from "
            "open_clip.list_pretrained_tags_by_model(name), a hub id, or a checkpoint file path"
        ) from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model, preprocess, tokenizer, model_id(name, pretrained), torch.device(device))


def load_model(name: str, pretrained: str | None = None, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """Load (once per process) an open_clip model; `pretrained` is None (random), a tag, a hub id or a file."""
    with _LOCK:
        return _load(name, pretrained or None, device, precision)
