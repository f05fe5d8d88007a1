"""Training-free few-shot classification: support sampling, prototype, Tip-Adapter and CODER-Adapter logits."""

from coderflow.tasks.fewshot.methods import (
    AlphaBeta,
    accuracy,
    cache_logits,
    class_prototypes,
    coder_adapter_logits,
    coder_affinity,
    l2_normalize,
    one_hot,
    prototype_logits,
    tip_adapter_logits,
    tip_affinity,
    tune_alpha_beta,
    zero_shot_logits,
)
from coderflow.tasks.fewshot.sampling import SupportSet, augment_image, augmentation_seed, sample_support

__all__ = [
    "AlphaBeta",
    "SupportSet",
    "accuracy",
    "augment_image",
    "augmentation_seed",
    "cache_logits",
    "class_prototypes",
    "coder_adapter_logits",
    "coder_affinity",
    "l2_normalize",
    "one_hot",
    "prototype_logits",
    "sample_support",
    "tip_adapter_logits",
    "tip_affinity",
    "tune_alpha_beta",
    "zero_shot_logits",
]
