"""Prefect tasks: train IMO adapters on ingested shards (resumable per epoch) and measure intra-modal overlap."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from prefect import get_run_logger, task

from coderflow.config import AdapterConfig, ModelConfig
from coderflow.results import AdapterResult
from coderflow.storage.arrays import load_images
from coderflow.storage.atomic import atomic_path
from coderflow.storage.layout import Layout, content_id, model_id
from coderflow.storage.shards import list_shards
from coderflow.tasks.adapter.data import ShardBatches, training_preprocess
from coderflow.tasks.adapter.overlap import overlap_stats
from coderflow.tasks.adapter.train import make_head, train_adapters
from coderflow.tasks.embed.adapters import adapter_id, adapter_state_dict, add_adapters, load_adapters
from coderflow.tasks.texts.task import dataset_classes


def _save(obj: Any, path: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train_inputs(normalize: bool) -> str:
    """What the adapter was trained on, part of its id: 'normalized' (CLIP's mean/std) or 'pixels' (IMO's [0, 1])."""
    return "normalized" if normalize else "pixels"


@task(name="train-adapter")
def train_adapter(dataset: str, model: ModelConfig, cfg: AdapterConfig, workdir: str) -> AdapterResult:
    """Train adapters + a linear head with cross-entropy on a labeled split; resume from the last epoch checkpoint."""
    from coderflow.tasks.embed.model import create_model

    log = get_run_logger()
    layout = Layout.at(workdir)
    classnames, _ = dataset_classes(layout, dataset)
    shards = list_shards(layout.shard_dir(dataset, cfg.train_split))
    if not shards:
        raise FileNotFoundError(f"no shards for {dataset}/{cfg.train_split}: run `coderflow ingest` for it first")
    base = model_id(model.name, model.pretrained)
    net, preprocess = create_model(model.name, model.pretrained, model.device)  # trained in fp32
    torch.manual_seed(cfg.seed)  # the adapters' `down` init
    add_adapters(net, cfg.bottleneck, cfg.scale, cfg.dropout)
    head = make_head(net, len(classnames))
    train_dir = layout.adapter_train_dir(base, content_id(base, dataset, cfg.model_dump_json()))
    start_epoch, optimizer_state = 0, None
    checkpoints = sorted(train_dir.glob("epoch-*.pt"))
    if checkpoints:
        with checkpoints[-1].open("rb") as f:
            ckpt = torch.load(f, map_location="cpu", weights_only=True)
        load_adapters(net, ckpt["adapters"])
        head.load_state_dict(ckpt["head"])
        start_epoch, optimizer_state = int(ckpt["epoch"]), ckpt["optimizer"]
        log.info("resuming adapter training from %s (epoch %d)", checkpoints[-1].name, start_epoch)
    train_preprocess = training_preprocess(preprocess, cfg.train_normalize)  # IMO: unnormalised pixels by default
    batches = ShardBatches(shards, train_preprocess, cfg.batch_size, len(classnames), seed=cfg.seed)
    batches.epoch = start_epoch

    def on_epoch_end(epoch: int, ckpt: dict[str, Any]) -> None:
        _save(ckpt, train_dir / f"epoch-{epoch + 1:04d}.pt")
        log.info("epoch %d: mean loss %.4f", epoch + 1, ckpt["epoch_loss"])

    started = time.perf_counter()
    result = train_adapters(
        net, batches, len(classnames), epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, head=head,
        normalize=cfg.head_input == "normalized",
        start_epoch=start_epoch, optimizer_state=optimizer_state, on_epoch_end=on_epoch_end, seed=cfg.seed,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    state = adapter_state_dict(net)
    aid = adapter_id(state, base, train_inputs(cfg.train_normalize))
    payload = {
        "adapter_id": aid,
        "base_model_id": base,
        "train_inputs": train_inputs(cfg.train_normalize),
        "bottleneck": cfg.bottleneck,
        "scale": cfg.scale,
        "dropout": cfg.dropout,
        "state_dict": state,
        "trained_on": f"{dataset}/{cfg.train_split}",
        "config": cfg.model_dump_json(),
        "epoch_losses": [float(v) for v in result.epoch_losses],
    }
    path = layout.adapter_file(base, aid)
    _save(payload, path)
    log.info("adapter %s saved to %s", aid, path)
    return AdapterResult(
        adapter_id=aid,
        path=str(path),
        base_model_id=base,
        steps=len(result.losses),
        first_loss=result.losses[0] if result.losses else None,
        last_loss=result.losses[-1] if result.losses else None,
        epoch_losses=payload["epoch_losses"],
        seconds=seconds,
        images_per_second=batches.seen / seconds if batches.seen and seconds > 0 else None,
        skipped_samples=batches.skipped,
    )


@task(name="measure-overlap", task_run_name="measure-overlap {model_id_}")
def measure_overlap(dataset: str, split: str, model_id_: str, cfg: AdapterConfig, workdir: str) -> list[dict[str, Any]]:
    """Overlap of same- vs different-class cosine distributions and feature variance, as metric rows."""
    images = load_images(Layout.at(workdir), model_id_, dataset, split)
    keep = images.labels >= 0
    stats = overlap_stats(images.x[keep], images.labels[keep], bins=cfg.overlap_bins, max_pairs=cfg.overlap_max_pairs)
    values = {k: getattr(stats, k) for k in ("overlap", "mean_same", "mean_diff", "variance", "n_same", "n_diff")}
    get_run_logger().info("overlap on %s/%s with %s: %s", dataset, split, model_id_, json.dumps(values))
    return [{"method": "overlap", "model_id": model_id_, "metric": k, "value": float(v)} for k, v in values.items()]
