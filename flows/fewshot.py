"""The few-shot flow: K-shot support sets x seeds, augmented support embeddings, Tip-/CODER-Adapter, prototypes."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from prefect import flow, get_run_logger, unmapped

from coderflow.config import PipelineConfig
from coderflow.flows.bookkeeping import flow_run_id, recorded_run, refreshed_on_error, resolved_workdir
from coderflow.flows.naming import run_namer, tag_flow_run
from coderflow.flows.pipeline import embed_images, ingest_dataset, text_bank
from coderflow.flows.runners import holds_workdir_lock, subflows_share_heartbeat, with_runner
from coderflow.results import FewShotResult
from coderflow.storage.runs import new_run_id
from coderflow.tasks.embed.task import describe_model
from coderflow.tasks.evaluate.task import evaluate_run
from coderflow.tasks.fewshot.task import (
    accuracy_table,
    collect_predictions,
    fewshot_predict,
    map_test_classes,
    plan_support_sets,
    plot_accuracy_vs_shots,
    refuse_overlapping_splits,
    refuse_shared_splits,
    shift_summary,
    write_augmented_split,
)


@flow(name="few-shot", flow_run_name=run_namer(what="few-shot"), on_running=[tag_flow_run])
@subflows_share_heartbeat
@holds_workdir_lock
def fewshot(config: PipelineConfig) -> FewShotResult:
    """Training-free few-shot classification over shots x seeds; alpha/beta chosen on val, figures on test."""
    workdir = resolved_workdir(config.workdir)
    with refreshed_on_error(workdir):
        return _fewshot(config, workdir)


def _fewshot(config: PipelineConfig, workdir: str) -> FewShotResult:
    fs, model = config.fewshot, config.model
    splits = {
        name: config.dataset.model_copy(update={"split": name})
        for name in (fs.train_split, fs.val_split, fs.test_split)
    }
    refuse_shared_splits(config.dataset, list(splits), workdir)
    if fs.searches_on_test:
        get_run_logger().warning(
            "fewshot.val_split is the test split %r: hyper-parameters are searched on the images the figures are "
            "measured on, as Tip-Adapter's ImageNet script does; the figures are optimistic",
            fs.test_split,
        )
    for ds in splits.values():
        ingest_dataset(ds, workdir)
    targets = fs.target_datasets(config.dataset)  # distribution shift: other test sets, same support and search
    for target in targets:
        ingest_dataset(target, workdir)
    refuse_overlapping_splits(config.dataset.name, list(splits), workdir, [(t.name, t.split) for t in targets])
    shift = map_test_classes(config.dataset.name, targets, workdir)
    original = model.model_copy(update={"adapter": None})  # the zero-shot term and Tip-X's KL use these features
    models = [original, model] if model.adapter else [original]
    for m in models:
        for ds in [splits[fs.val_split], splits[fs.test_split], *targets]:
            with_runner(embed_images, config)(ds, m, workdir, config.max_failure_rate)
    bank = text_bank(
        splits[fs.test_split],
        original,
        fs.bank_texts(config.texts),  # CODER's few-shot wordings where they differ (fewshot.texts)
        workdir,
        list(config.templates) if config.templates else None,
        config.classify,
    )
    plan = plan_support_sets(config.dataset.name, fs.train_split, bank.n_classes, fs, workdir)
    if fs.augment_views > 0:
        support_split = write_augmented_split(
            config.dataset.name, fs.train_split, plan.pool, fs.augment_views, fs.augment_seed,
            config.dataset.samples_per_shard, workdir,
        )  # fmt: skip
    else:  # no augmentation: the support features are the train images' own embeddings
        support_split = fs.train_split
    augmented = [
        with_runner(embed_images, config)(
            config.dataset.model_copy(update={"split": support_split}), m, workdir, config.max_failure_rate
        )
        for m in models
    ]
    described = describe_model(original, workdir)
    mid = described.model_id
    adapted_mid = describe_model(model, workdir).model_id if model.adapter else None
    run_id = new_run_id(config.run_name or "fewshot")
    record = {
        "flow": "few-shot",
        "started_at": datetime.now(UTC),
        "config": config.model_dump(mode="json"),
        "dataset": config.dataset.name,
        "model_id": mid,
        "textbank_id": bank.textbank_id,
        "extra": {
            "preprocess": described.preprocess,
            "support_split": support_split,
            "short_classes": plan.short,
            "adapted_model_id": adapted_mid,
            "test_datasets": [t.dataset for t in shift],
        },
    }
    with recorded_run(run_id, workdir, record) as extra:
        cells = sorted(plan.sets)
        futures = fewshot_predict.map(
            unmapped(run_id), cells, [plan.sets[c] for c in cells], unmapped(config.dataset.name),
            unmapped(support_split), unmapped(mid), unmapped(adapted_mid), unmapped(bank.textbank_id), unmapped(fs),
            unmapped(workdir), [i == 0 for i in range(len(cells))], unmapped(plan.paths), unmapped(shift), unmapped(model.device),
        )  # fmt: skip
        parts = [f.result() for f in futures]
        collect_predictions(run_id, [p.part for p in parts], [p.support_part for p in parts], workdir)
        params = [row for p in parts for row in p.params]
        evaluate_run(run_id, mid, bank.n_classes, workdir, params)
        plot = plot_accuracy_vs_shots(run_id, workdir, bank.n_classes, config.dataset.name)
        extra |= {"plot": plot, "augmented_images": [asdict(a) for a in augmented]}
    table = accuracy_table(run_id, workdir, config.dataset.name)
    shifted = shift_summary(run_id, workdir) if shift else []
    return FewShotResult(run_id, plot, len(parts), table, flow_run_id(), shifted)
