"""K-shot support-set sampling and seeded, reproducible image augmentation for few-shot caches."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class SupportSet:
    """Indices into the train labels, grouped by class, and the classes that had fewer than K (per_class: ascending
    class, indices ascending; reference: classes in order of first appearance, indices in the order drawn)."""

    indices: np.ndarray
    labels: np.ndarray
    shots: int
    seed: int
    short_classes: dict[int, int] = field(default_factory=dict)  # class -> number available (< shots)


def sample_support(labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None) -> SupportSet:
    """Draw `shots` train indices per class without replacement; a class with fewer samples gives all of them.

    Each class uses its own generator seeded by (seed, class), so the draw for a class does not depend on the
    other classes. With `num_classes` given, classes 0..num_classes-1 are sampled (absent ones are reported with 0).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}; pass one integer label per train sample")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}; use a non-negative integer")
    classes = range(num_classes) if num_classes is not None else np.unique(labels).tolist()
    chosen: list[np.ndarray] = []
    short: dict[int, int] = {}
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            short[int(c)] = len(pool)
            pick = pool
        else:
            pick = np.sort(np.random.default_rng([seed, int(c)]).choice(pool, size=shots, replace=False))
        chosen.append(pick)
    indices = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)
    return SupportSet(indices=indices, labels=labels[indices], shots=shots, seed=seed, short_classes=short)


def reference_support(labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None) -> SupportSet:
    """Draw the support set as CoOp, Tip-Adapter and CODER do (generate_fewshot_dataset, repeat=True).

    Python's `random` seeded with `seed` (their set_seed / random.seed; nothing draws from it before the support
    set), the train items grouped by label in order of first appearance (split_dataset_by_label), then per class
    `random.sample(items, shots)`, or `random.choices(items, k=shots)` (with repetition) when a class has fewer.
    A private random.Random(seed) draws the same numbers as the seeded module-level functions. Classes of
    0..num_classes-1 with no train item are reported in short_classes with 0 (the references skip them too).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}; pass one integer label per train sample")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        groups.setdefault(int(c), []).append(i)
    chosen: list[int] = []
    short: dict[int, int] = {}
    for c, items in groups.items():
        if len(items) >= shots:
            chosen += rng.sample(items, shots)
        else:
            short[c] = len(items)
            chosen += rng.choices(items, k=shots)
    for c in range(num_classes or 0):
        if c not in groups:
            short[c] = 0
    indices = np.asarray(chosen, dtype=np.int64)
    return SupportSet(indices=indices, labels=labels[indices], shots=shots, seed=seed, short_classes=short)


Sampling = Literal["reference", "per_class"]


def draw_support(
    labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None, sampling: Sampling = "reference"
) -> SupportSet:
    """The support set of (shots, seed) under a sampling rule: `reference` (reference_support, the references' draw
    over the train order) or `per_class` (sample_support, one numpy generator per class)."""
    if sampling == "reference":
        return reference_support(labels, shots, seed, num_classes)
    if sampling == "per_class":
        return sample_support(labels, shots, seed, num_classes)
    raise ValueError(f"fewshot.sampling {sampling!r}: use reference or per_class")


def augmentation_seed(seed: int, sample: int, view: int) -> int:
    """A 64-bit seed derived from (run seed, sample index, view index)."""
    return int(np.random.SeedSequence([seed, sample, view]).generate_state(1, dtype=np.uint64)[0])


def augment_image(
    img: Image.Image,
    seed: int,
    sample: int,
    view: int,
    size: int = 224,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """Random resized crop (area fraction in `scale`) to `size` x `size` + horizontal flip with p=0.5.

    The randomness comes only from a generator seeded by (seed, sample, view), not from torch's global RNG, so the
    same arguments give the same image in any process or thread. Apply the CLIP preprocess to the result.
    """
    rng = np.random.default_rng(augmentation_seed(seed, sample, view))
    width, height = img.size
    top, left, h, w = _crop_box(width, height, rng, scale, ratio)
    out = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    if rng.random() < 0.5:
        out = TF.hflip(out)
    return out


def _crop_box(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop as torchvision's RandomResizedCrop draws it, from a numpy generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # fallback: central crop with the aspect ratio clamped into `ratio`
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
