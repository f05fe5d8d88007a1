"""Re-iterable training batches from WebDataset shards: decoded, preprocessed, shuffled per epoch with a seed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from coderflow.storage.shards import image_entry, iter_samples, sample_label
from coderflow.tasks.embed.encode import decode_image


def training_preprocess(preprocess: Callable[[Any], torch.Tensor], normalize: bool) -> Callable[[Any], torch.Tensor]:
    """The model's eval preprocess for training, with or without its mean/std Normalize step.

    IMO trains its adapters on unnormalised pixels in [0, 1] (CLIP_fewshot_imo supervised_train.py:83-89: Resize,
    CenterCrop, RGB, ToTensor, the Normalize line commented out), so `normalize=False` drops every Normalize of a
    torchvision Compose; `normalize=True` keeps the preprocess as it is (what the embeddings see)."""
    if normalize:
        return preprocess
    from torchvision.transforms import Compose, Normalize

    steps = getattr(preprocess, "transforms", None)
    if not isinstance(preprocess, Compose) or steps is None or not any(isinstance(t, Normalize) for t in steps):
        raise TypeError(
            f"cannot drop the Normalize step of {type(preprocess).__name__}: expected a torchvision Compose ending "
            "in Normalize (open_clip's preprocess); set adapter.train_normalize: true to train on it as it is"
        )
    return Compose([t for t in steps if not isinstance(t, Normalize)])


class ShardBatches:
    """(images, labels) batches over shards, iterable once per epoch; epoch e shuffles with seed (seed, e).

    Shard order is permuted and samples are shuffled within a buffer, so memory stays bounded by `buffer` images.
    Samples without a decodable image or a label in [0, n_classes) are skipped and counted in `skipped`.
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        preprocess: Callable[[Any], torch.Tensor],
        batch_size: int,
        n_classes: int,
        seed: int = 0,
        buffer: int = 1024,
        progress: bool = True,
    ) -> None:
        if not shards:
            raise ValueError("no training shards: ingest the training dataset first")
        self.shards = [str(s) for s in shards]
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.n_classes = n_classes
        self.seed = seed
        self.buffer = max(buffer, batch_size)
        self.epoch = 0
        self.skipped = 0
        self.seen = 0  # images yielded in batches, over all epochs
        self.progress = progress

    def _samples(self, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, int]]:
        for i in rng.permutation(len(self.shards)):
            for sample in iter_samples(self.shards[i]):
                entry, label = image_entry(sample), sample_label(sample)
                if entry is None or label is None or not 0 <= label < self.n_classes:
                    self.skipped += 1
                    continue
                try:
                    yield self.preprocess(decode_image(entry[1])), label
                except Exception:  # undecodable images are counted, not fatal
                    self.skipped += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        pool: list[tuple[torch.Tensor, int]] = []

        def drain(final: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            rng.shuffle(pool)  # type: ignore[arg-type]
            while len(pool) >= self.batch_size or (final and pool):
                chunk = [pool.pop() for _ in range(min(self.batch_size, len(pool)))]
                self.seen += len(chunk)
                yield torch.stack([x for x, _ in chunk]), torch.tensor([y for _, y in chunk])

        with tqdm(desc=f"epoch {self.epoch}", unit="img", disable=not self.progress, leave=False) as bar:
            for item in self._samples(rng):
                pool.append(item)
                if len(pool) >= self.buffer:
                    for batch in drain(final=False):
                        bar.update(len(batch[1]))
                        yield batch
            for batch in drain(final=True):
                bar.update(len(batch[1]))
                yield batch
