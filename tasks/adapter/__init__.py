"""Intra-modal overlap reduction (Kravets & Namboodiri 2024): image-encoder adapters, their training, overlap metrics."""

from coderflow.tasks.adapter.overlap import OverlapStats, histogram_overlap, overlap_stats, pair_cosines
from coderflow.tasks.adapter.train import TrainResult, train_adapters
from coderflow.tasks.embed.adapters import (
    AdaptedResidualAttentionBlock,
    BottleneckAdapter,
    adapter_id,
    adapter_state_dict,
    add_adapters,
    freeze_except_adapters,
    load_adapters,
)

__all__ = [
    "AdaptedResidualAttentionBlock",
    "BottleneckAdapter",
    "OverlapStats",
    "TrainResult",
    "adapter_id",
    "adapter_state_dict",
    "add_adapters",
    "freeze_except_adapters",
    "histogram_overlap",
    "load_adapters",
    "overlap_stats",
    "pair_cosines",
    "train_adapters",
]
