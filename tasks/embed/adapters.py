"""Bottleneck adapters parallel to the MLP of every residual block of an open_clip ViT image encoder.

Each block computes  x = q + ls_1(attn(ln_1(q)));  x = x + ls_2(mlp(ln_2(x))) + s * up(dropout(relu(down(x)))).
`up` and all adapter biases start at zero, so the adapted model first computes exactly what the original does.
Adapter weights live under `<block>.adapter.` in the model's state_dict; the base weights keep their names.
"""

from __future__ import annotations

import hashlib

import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

ADAPTER_KEY = ".adapter."


class BottleneckAdapter(nn.Module):
    """s * up(dropout(relu(down(x)))), D -> bottleneck -> D, starting as the zero function."""

    def __init__(
        self, width: int, bottleneck: int = 64, scale: float = 0.03, dropout: float = 0.1, learnable_scale: bool = False
    ) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)  # nn.Linear's default, made explicit
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        s = torch.tensor(float(scale))
        if learnable_scale:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)  # saved with the weights (it changes the function), not trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x))))


class AdaptedResidualAttentionBlock(ResidualAttentionBlock):
    """open_clip 3.3.0's ResidualAttentionBlock.forward with the adapter branch added next to the MLP."""

    adapter: BottleneckAdapter

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        k_x = self.ln_1_kv(k_x) if hasattr(self, "ln_1_kv") and k_x is not None else None
        v_x = self.ln_1_kv(v_x) if hasattr(self, "ln_1_kv") and v_x is not None else None
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), k_x=k_x, v_x=v_x, attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x))) + self.adapter(x)


def _vit_blocks(model: nn.Module) -> nn.ModuleList:
    visual = getattr(model, "visual", model)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(
            f"adapters need an open_clip ViT image encoder (model.visual.transformer.resblocks); got "
            f"{type(visual).__name__}. Use a ViT model such as 'ViT-B-32' (ResNet and timm encoders are not supported)"
        )
    for i, block in enumerate(blocks):
        if type(block) not in (ResidualAttentionBlock, AdaptedResidualAttentionBlock):
            raise TypeError(
                f"resblock {i} is a {type(block).__name__}, not open_clip's ResidualAttentionBlock; this model's "
                "custom blocks are not supported. Use a standard open_clip ViT such as 'ViT-B-32'"
            )
    return blocks


def add_adapters(
    model: nn.Module, bottleneck: int = 64, scale: float = 0.03, dropout: float = 0.1, learnable_scale: bool = False
) -> list[BottleneckAdapter]:
    """Add one adapter to every residual block of model.visual (in place); returns the adapters, first block first.

    `model` is an open_clip CLIP model or its `.visual` ViT. The text encoder is untouched.
    """
    blocks = _vit_blocks(model)
    if any(isinstance(b, AdaptedResidualAttentionBlock) for b in blocks):
        raise ValueError("this model already has adapters; create a fresh model or use load_adapters to set weights")
    adapters = []
    for block in blocks:
        ref = block.mlp.c_fc.weight
        adapter = BottleneckAdapter(block.ln_2.normalized_shape[0], bottleneck, scale, dropout, learnable_scale)
        block.adapter = adapter.to(device=ref.device, dtype=ref.dtype)
        block.__class__ = AdaptedResidualAttentionBlock
        adapters.append(block.adapter)
    return adapters


def freeze_except_adapters(model: nn.Module, head: nn.Module | None = None) -> list[nn.Parameter]:
    """requires_grad only for adapter parameters (and `head`'s); returns the trainable parameters."""
    names = [name for name, _ in model.named_parameters() if ADAPTER_KEY in f".{name}"]
    if not names:
        raise ValueError("the model has no adapters; call add_adapters(model) first")
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(ADAPTER_KEY in f".{name}")
        if p.requires_grad:
            trainable.append(p)
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(True)
            trainable.append(p)
    return trainable


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only (detached CPU copies), keyed as in model.state_dict()."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if ADAPTER_KEY in f".{k}"}
    if not sd:
        raise ValueError("the model has no adapters; call add_adapters(model) first")
    return sd


def load_adapters(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by adapter_state_dict into a model with adapters of the same shapes."""
    own = {k: v for k, v in model.state_dict().items() if ADAPTER_KEY in f".{k}"}
    if not own:
        raise ValueError("the model has no adapters; call add_adapters(model, ...) with the saved sizes first")
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"adapter weights do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
            "load weights trained on the same base architecture"
        )
    bad = [k for k in own if own[k].shape != state_dict[k].shape]
    if bad:
        raise ValueError(
            f"adapter shape mismatch at {bad[0]}: model {tuple(own[bad[0]].shape)} vs saved "
            f"{tuple(state_dict[bad[0]].shape)}; call add_adapters with the bottleneck size used in training"
        )
    model.load_state_dict(state_dict, strict=False)


def adapter_id(state_dict: dict[str, torch.Tensor], base_model_id: str, train_inputs: str = "") -> str:
    """Content id of adapter weights on a base model: 'adapter-' + 16 hex digits of sha256(base id, names, tensors),
    with `train_inputs` (what it was trained on: 'pixels' or 'normalized') hashed too when given."""
    h = hashlib.sha256(base_model_id.encode())
    if train_inputs:
        h.update(f"\0train_inputs={train_inputs}".encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return "adapter-" + h.hexdigest()[:16]
