"""Prefect task: run zero-shot methods over stored embeddings and write the run's predictions."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from prefect import get_run_logger, task

from coderflow.config import ClassifyConfig
from coderflow.results import Predictions
from coderflow.storage.arrays import load_images, load_texts
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_stream
from coderflow.storage.schemas import PREDICTIONS
from coderflow.storage.shards import ingest_info
from coderflow.tasks.classify.methods import cupl_sentence_rows
from coderflow.tasks.classify.predict import prediction_table
from coderflow.tasks.classify.zeroshot import check_methods, run_methods


@task(name="classify-zero-shot")
def classify_zero_shot(
    run_id: str,
    dataset: str,
    split: str,
    model_id: str,
    textbank_id: str,
    methods: list[str],
    workdir: str,
    classify: ClassifyConfig | None = None,
    waffle_textbank_ids: list[str] | None = None,
    method_banks: dict[str, str] | None = None,
    chunk_size: int = 4096,
    device: str = "cpu",
) -> Predictions:
    """All requested methods over one load of the embeddings; predictions land in runs/<run_id>/. The products run
    on `device` (model.device; numpy on "cpu")."""
    check_methods(methods)
    layout = Layout.at(workdir)
    images = load_images(layout, model_id, dataset, split)
    bank = load_texts(layout, textbank_id, model_id)
    waffles = [load_texts(layout, w, model_id) for w in waffle_textbank_ids or []]
    loaded = {bid: load_texts(layout, bid, model_id) for bid in set((method_banks or {}).values())}
    others = {method: loaded[bid] for method, bid in (method_banks or {}).items()}
    for method, other in others.items():
        if other.class_names != bank.class_names:
            raise ValueError(
                f"bank {method_banks[method]} for {method} has other classes than bank {textbank_id}: import it for "
                "this dataset (`coderflow texts import --dataset ...`)"
            )
    info: dict[str, dict[str, float]] = {}
    cupl_bank = others.get("cupl", bank)
    if "cupl" in methods and not cupl_sentence_rows(cupl_bank.source, len(cupl_bank.t)).any():
        # no number rather than clip's number under cupl's name: every class would fall back to its templates
        get_run_logger().warning(
            "cupl left out of this run: bank %s has no CuPL sentences (its scores would be clip's): import CuPL's "
            "prompts (`coderflow texts import FILE --format cupl`) and pass --classify.banks cupl=<bank id>",
            (method_banks or {}).get("cupl", textbank_id),
        )
        methods = [m for m in methods if m != "cupl"]

    def tables() -> Iterator[pa.Table]:
        # images in chunks: memory holds one chunk's image-to-text cosines, whatever the size of the split
        for start in range(0, len(images.keys), chunk_size):
            stop = start + chunk_size
            chunk = images.x[start:stop]
            for r in run_methods(methods, chunk, bank, classify or ClassifyConfig(), waffles, others, device):
                for key, value in r.info.items():
                    info.setdefault(r.method, {})[key] = info.get(r.method, {}).get(key, 0) + value
                yield prediction_table(
                    r.scores, images.keys[start:stop], images.labels[start:stop], run_id=run_id, method=r.method,
                    dataset=dataset, split=split, logits=r.logits, pred=r.pred, top5=r.top5, seed=r.seed,
                    image_hash=None if images.hashes is None else images.hashes[start:stop],
                )  # fmt: skip

    path = layout.run_file(run_id, "predictions.parquet")
    write_stream(tables(), PREDICTIONS, path)
    rerank = info.get("coder_rerank")
    if rerank and rerank.get("ovo_pairs_consulted"):  # share of consulted pairs that had one-vs-one texts both ways
        rerank["ovo_coverage"] = rerank["ovo_pairs_covered"] / rerank["ovo_pairs_consulted"]
    log = get_run_logger()
    log.info("%d samples classified with %s (%d images failed to embed)", len(images.keys), methods, images.n_errors)
    for name, details in info.items():
        log.info("%s: %s", name, details)
    return Predictions(
        path=str(path),
        split_id=(ingest_info(layout.shard_dir(dataset, split)) or {}).get("split_id"),  # the images it scored
        n_samples=len(images.keys),
        n_errors=images.n_errors,
        n_classes=bank.n_classes,
        methods=info,
    )
