"""Supervised training of image-encoder adapters: adapted features -> linear head -> cross-entropy, AdamW."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coderflow.tasks.embed.adapters import BottleneckAdapter, adapter_state_dict, freeze_except_adapters

# Called after each epoch with (epoch index just finished, checkpoint dict); see train_adapters.
EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """Per-step losses of this call, the trained head and the optimizer (its state_dict resumes training)."""

    losses: list[float]
    head: nn.Linear
    optimizer: torch.optim.Optimizer
    epochs_done: int
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of each epoch run in this call


def encode(model: nn.Module, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Image features of an open_clip CLIP model (encode_image) or of its bare `.visual` encoder."""
    feats = model.encode_image(images) if hasattr(model, "encode_image") else model(images)
    return F.normalize(feats, dim=-1) if normalize else feats


def make_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """A linear classifier over the image embedding (width: model.visual.output_dim)."""
    visual = getattr(model, "visual", model)
    width = getattr(visual, "output_dim", None)
    if not isinstance(width, int):
        raise TypeError(f"cannot find the embedding width (visual.output_dim) of {type(visual).__name__}; pass head=")
    ref = next(model.parameters())
    return nn.Linear(width, num_classes).to(device=ref.device, dtype=ref.dtype)


def train_adapters(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    head: nn.Linear | None = None,
    normalize: bool = False,
    start_epoch: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    seed: int = 0,
) -> TrainResult:
    """Train the adapters of `model` (add_adapters first) and a linear head with cross-entropy for epochs
    start_epoch..epochs-1; everything else is frozen and kept in eval mode.

    `batches` yields (images [B, 3, H, W], labels [B]) and is iterated once per epoch (a list or DataLoader; a
    one-shot generator only for a single epoch). Dropout draws from torch's RNG seeded with seed + epoch inside a
    forked RNG state, so a resumed run repeats the uninterrupted one. After each epoch `on_epoch_end(epoch, ckpt)`
    gets ckpt = {"epoch": next epoch, "adapters", "head", "optimizer", "epoch_loss"}: to resume, load_adapters(ckpt
    ["adapters"]), rebuild the head from ckpt["head"] and call again with start_epoch=ckpt["epoch"] and
    optimizer_state=ckpt["optimizer"].
    """
    if not 0 <= start_epoch <= epochs:
        raise ValueError(f"start_epoch must be in [0, epochs={epochs}], got {start_epoch}")
    if epochs - start_epoch > 1 and iter(batches) is batches:
        raise ValueError("batches is a one-shot iterator but several epochs were asked; pass a list or a DataLoader")
    head = head if head is not None else make_head(model, num_classes)
    if head.out_features != num_classes:
        raise ValueError(f"head has {head.out_features} outputs for num_classes={num_classes}; pass a matching head")
    params = freeze_except_adapters(model, head)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    device = next(head.parameters()).device
    model.eval()
    for m in model.modules():
        if isinstance(m, BottleneckAdapter):
            m.train()
    head.train()

    losses: list[float] = []
    epoch_losses: list[float] = []
    for epoch in range(start_epoch, epochs):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + epoch)
            step_losses = []
            for images, labels in batches:
                logits = head(encode(model, images.to(device), normalize))
                loss = F.cross_entropy(logits, labels.to(device).long())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_losses.append(loss.item())
        if not step_losses:
            raise ValueError(f"epoch {epoch} got no batches; check the data source is not empty or exhausted")
        losses.extend(step_losses)
        epoch_losses.append(sum(step_losses) / len(step_losses))
        if on_epoch_end is not None:
            on_epoch_end(
                epoch,
                {
                    "epoch": epoch + 1,
                    "adapters": adapter_state_dict(model),
                    "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "epoch_loss": epoch_losses[-1],
                },
            )
    model.eval()
    head.eval()
    return TrainResult(losses, head, optimizer, epochs, epoch_losses)
