"""IMO adapters train on what IMO trains on: unnormalised pixels (supervised_train.py:83-89), CLIP-normalised images
with `adapter.train_normalize`; the adapter id says which, so the two never share results."""

from __future__ import annotations

import logging

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from coderflow.config import AdapterConfig, ModelConfig
from coderflow.tasks.adapter import task as adapter_task
from coderflow.tasks.adapter.data import training_preprocess
from coderflow.tasks.embed import model as embed_model
from coderflow.tasks.embed.adapters import adapter_id

PREPROCESS = open_clip.image_transform(32, is_train=False)  # as create_model returns it: ..., ToTensor, Normalize
WHITE = Image.new("RGB", (40, 40), (255, 255, 255))
BLACK = Image.new("RGB", (40, 40), (0, 0, 0))


def test_training_input_is_pixels_by_default_and_normalised_with_the_flag():
    assert AdapterConfig().train_normalize is False
    pixels = training_preprocess(PREPROCESS, AdapterConfig().train_normalize)
    assert pixels(WHITE).max().item() == 1.0 and pixels(BLACK).min().item() == 0.0  # ToTensor's [0, 1]
    normalised = training_preprocess(PREPROCESS, AdapterConfig(train_normalize=True).train_normalize)
    assert torch.equal(normalised(WHITE), PREPROCESS(WHITE))
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    np.testing.assert_allclose(normalised(WHITE)[:, 0, 0].numpy(), (1 - mean) / std, rtol=1e-5)
    with pytest.raises(TypeError, match="train_normalize"):
        training_preprocess(lambda img: torch.zeros(3), False)


class _Captured(Exception):
    pass


@pytest.mark.parametrize("flag", [False, True])
def test_the_training_task_feeds_the_configured_input(monkeypatch, tmp_path, flag: bool):
    """train-adapter hands ShardBatches the model's preprocess without (default) or with its Normalize."""
    seen = {}

    def capture(shards, preprocess, *args, **kwargs):
        seen["white"] = preprocess(WHITE)
        raise _Captured

    monkeypatch.setattr(adapter_task, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(adapter_task, "dataset_classes", lambda layout, dataset: (["a", "b"], []))
    monkeypatch.setattr(adapter_task, "list_shards", lambda path: ["train-000000.tar"])
    monkeypatch.setattr(embed_model, "create_model", lambda *a: (torch.nn.Linear(1, 1), PREPROCESS))
    monkeypatch.setattr(adapter_task, "add_adapters", lambda *a: None)
    monkeypatch.setattr(adapter_task, "make_head", lambda *a: torch.nn.Linear(1, 2))
    monkeypatch.setattr(adapter_task, "ShardBatches", capture)
    with pytest.raises(_Captured):
        adapter_task.train_adapter.fn("demo", ModelConfig(), AdapterConfig(train_normalize=flag), str(tmp_path))
    assert (seen["white"].max().item() > 1.5) is flag


def test_adapter_id_tells_the_training_inputs_apart():
    state = {"visual.adapter.down.weight": torch.ones(2, 2)}
    pixels = adapter_id(state, "ViT-S-32-alt__random", adapter_task.train_inputs(False))
    normalised = adapter_id(state, "ViT-S-32-alt__random", adapter_task.train_inputs(True))
    assert pixels != normalised and pixels.startswith("adapter-")
    assert adapter_task.train_inputs(AdapterConfig().train_normalize) == "pixels"
    # the training folder (checkpoints to resume) is keyed by the whole config, this setting included
    assert AdapterConfig().model_dump_json() != AdapterConfig(train_normalize=True).model_dump_json()
