"""Prefect tasks: build and store a text bank for a dataset's classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from coderflow.config import ClassifyConfig, ModelConfig, TextsConfig
from coderflow.results import StoredBank
from coderflow.storage.arrays import image_parts, load_images
from coderflow.storage.atomic import write_text, write_text_if_changed
from coderflow.storage.integrity import intact
from coderflow.storage.layout import Layout, content_id, file_sha256, text_model_id
from coderflow.storage.parquet_io import write_table
from coderflow.storage.schemas import TEXTS
from coderflow.storage.shards import ingest_info, read_class_file
from coderflow.tasks import retry_transient
from coderflow.tasks.embed.encode import token_counts
from coderflow.tasks.embed.model import configured_model_id, load_configured
from coderflow.tasks.embed.text_store import TextStore
from coderflow.tasks.report.tables import markdown_escape
from coderflow.tasks.texts.bank import (
    DEFAULT_TEMPLATES,
    bank_summary,
    build_bank,
    name_texts,
    template_texts,
    text_classnames,
    why_without,
)
from coderflow.tasks.texts.imports import FORMATS, clip_benchmark_templates, imported_texts, read_json_lists
from coderflow.tasks.texts.make import make_bank, waffle_bank


def dataset_classes(layout: Layout, dataset: str) -> tuple[list[str], list[str]]:
    """The class names and stored templates of an ingested dataset."""
    names = read_class_file(layout.classnames_file(dataset))
    if names is None:
        raise FileNotFoundError(f"dataset {dataset!r} is not ingested in {layout.root}: run `coderflow ingest` first")
    return names, read_class_file(layout.templates_file(dataset), templates=True) or []


@task(name="build-text-bank", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def build_text_bank(
    dataset: str,
    split: str,
    model: ModelConfig,
    texts: TextsConfig,
    workdir: str,
    templates: list[str] | None = None,
    classify: ClassifyConfig | None = None,
) -> StoredBank:
    """Generate and store the dataset's text bank; LLM replies are cached, so a retry costs no new calls.

    Templates: the given ones, else the dataset's, else CLIP's default list.
    """
    layout = Layout.at(workdir)
    log = get_run_logger()
    classnames, stored = dataset_classes(layout, dataset)
    classnames = text_classnames(texts.classnames, classnames)
    chosen = list(templates or stored or DEFAULT_TEMPLATES)  # the fallback too is an input of the bank
    mid = configured_model_id(model, workdir)
    classify = classify or ClassifyConfig()
    rerank = (classify.rerank_threshold, classify.rerank_k)
    confused = "ovo" in texts.types and texts.ovo_pairs in ("confused", "consulted") and texts.ovo_budget > 0
    # the bank is a function of these inputs: an unchanged re-run reuses it without generating anything
    inputs = [dataset, *classnames, "|", *chosen, texts.model_dump_json(), text_model_id(mid)]
    if confused:  # the pairs depend on the split's content (its shard hashes), the image model and CODER*'s rule
        inputs += [mid, (ingest_info(layout.shard_dir(dataset, split)) or {}).get("split_id", ""), str(rerank)]
        try:
            inputs.append(str(len(image_parts(layout, mid, dataset, split))))
        except FileNotFoundError:
            inputs.append("not embedded")
    marker = layout.textbank_by_inputs(content_id(*inputs))
    if marker.exists() and intact(layout.textbank_file(bank_id := marker.read_text().strip())):
        report = json.loads(layout.textbank_report(bank_id).read_text())
        write_text_if_changed(bank_id, layout.textbank_alias(dataset))
        log.info("text bank %s is up to date for these inputs: reused", bank_id)
        return StoredBank(
            bank_id, report["n_texts"], str(layout.textbank_file(bank_id)), n_classes=len(classnames), reused=True
        )
    lm = load_configured(model, workdir)
    images = None
    if confused:
        try:
            images = load_images(layout, lm.model_id, dataset, split).x
        except FileNotFoundError:
            log.warning("no image embeddings yet for %s/%s: one-vs-one pairs fall back to 'nearest'", dataset, split)
    store = TextStore(layout, text_model_id(lm.model_id), lambda: lm)
    bank, report = make_bank(classnames, chosen, texts, lm, layout.llm_cache_dir, images, rerank, store.encode)
    store.flush()  # the texts embedded while building (look-alike filter, pairs, senses): the embedding stage reuses them
    report["summary"] = bank_summary(bank, report, texts.llm.price_per_1k)
    bank_id = bank["textbank_id"][0].as_py()
    path = layout.textbank_file(bank_id)
    if not intact(path):
        write_table(bank, path, TEXTS)
    # unchanged content keeps its file (and mtime): another dataset with the same classes makes the same bank
    write_text_if_changed(json.dumps(report, indent=2, default=str), layout.textbank_report(bank_id))
    generator = report.get("generator")
    if not (isinstance(generator, dict) and generator.get("failures")):  # failed requests are asked again next time
        write_text(bank_id, marker)
    write_text_if_changed(bank_id, layout.textbank_alias(dataset))
    if report.get("not_found"):
        log.warning("not found by the %s generator (name texts only): %s", texts.generator, report["not_found"])
    log.info(
        "text bank %s: %d texts %s, %d truncated", bank_id, bank.num_rows, report.get("counts", {}), report["truncated"]
    )
    for kind, missing in report["summary"]["classes_without"].items():
        if missing:
            log.warning(
                "%d classes have no %s texts: %s", len(missing), kind, why_without(kind, missing, classnames, report)
            )
    publish_bank_summary(bank_id, bank, report["summary"])
    usage = generator.get("usage") if isinstance(generator, dict) else None
    return StoredBank(
        bank_id, bank.num_rows, str(path), n_classes=len(classnames), usage=usage, summary=report["summary"]["types"]
    )


def summary_markdown(bank_id: str, bank: Any, summary: dict[str, Any], sample: int = 3) -> str:
    """The text-bank summary as Markdown: a row per type, the classes left without att/ana, a few texts per type."""
    lines = [
        f"# Text bank {bank_id}",
        "",
        "| type | kept | classes | dropped | requests | asked | received | tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, r in summary["types"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in r["dropped"].items()) or "-"
        cells = (r["kept"], r["classes"], dropped, r["requests"], r["requested"], r["received"], r["tokens"])
        lines.append(f"| {t} | " + " | ".join(map(str, cells)) + " |")
    for t, missing in summary["classes_without"].items():
        if missing:
            names = ", ".join(map(markdown_escape, missing[:30]))  # class names and texts are text, not Markdown
            lines.append(f"\nClasses without {t} texts ({len(missing)}): {names}")
    rows = bank.select(["text_type", "text"]).to_pylist()
    lines.append("\n## Sample")
    for t in summary["types"]:
        lines += [f"- {t}: {markdown_escape(r['text'])}" for r in [x for x in rows if x["text_type"] == t][:sample]]
    return "\n".join(lines)


def publish_bank_summary(bank_id: str, bank: Any, summary: dict[str, Any]) -> None:
    """The summary in the run's log and as the `text-bank` Markdown artifact in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact

    text = summary_markdown(bank_id, bank, summary)
    get_run_logger().info("%s", text.split("\n## Sample")[0])
    create_markdown_artifact(text, key="text-bank", description=f"text bank {bank_id}: counts, drops, samples")


@task(name="build-waffle-bank")
def build_waffle_bank(dataset: str, model: ModelConfig, classify: ClassifyConfig, workdir: str, seed: int) -> str:
    """The WaffleCLIP prompt bank of a dataset's classes drawn with `seed`; returns its id."""
    layout = Layout.at(workdir)
    classnames, _ = dataset_classes(layout, dataset)
    lm = load_configured(model, workdir)
    bank = waffle_bank(classnames, classify, lm, seed)
    bank_id = bank["textbank_id"][0].as_py()
    if not intact(layout.textbank_file(bank_id)):
        write_table(bank, layout.textbank_file(bank_id), TEXTS)
    return bank_id


@task(name="import-text-bank")
def import_text_bank(
    dataset: str,
    path: str,
    fmt: str,
    model: ModelConfig,
    texts: TextsConfig,
    workdir: str,
    key: str | None = None,
) -> StoredBank:
    """A text bank from a published file (see tasks/texts/imports.py): the dataset's templates and name prompts plus
    the file's texts; class names matched case-insensitively, the unmatched ones reported, never dropped silently."""
    layout = Layout.at(workdir)
    log = get_run_logger()
    classnames, stored = dataset_classes(layout, dataset)
    data = read_json_lists(path)
    source = f"import:{fmt}:{Path(path).name}:{file_sha256(path)[:12]}"
    if fmt == "clip-benchmark":
        templates = clip_benchmark_templates(data, key or dataset)
        rows = template_texts(classnames, templates, texts.grammar == "all")
        report: dict[str, Any] = {"format": fmt, "key": key or dataset, "templates": len(templates)}
    elif fmt in ("dclip", "cupl"):
        after = texts.dclip_after_text
        imported, report = imported_texts(classnames, data, fmt, source, after)  # type: ignore[arg-type]
        rows = template_texts(classnames, stored or DEFAULT_TEMPLATES, texts.grammar == "all") + imported
        if report["unmatched_classes"]:
            log.warning("%d classes have no texts in %s: %s", len(report["unmatched_classes"]), path,
                        report["unmatched_classes"][:20])  # fmt: skip
        if report["unmatched_keys"]:
            log.warning("%d entries of %s match no class of %s: %s", len(report["unmatched_keys"]), path, dataset,
                        report["unmatched_keys"][:20])  # fmt: skip
    else:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    rows += name_texts(classnames, texts.name_template, texts.grammar == "all")
    lm = load_configured(model, workdir)
    bank = build_bank(rows, classnames, token_counts([t.text for t in rows], lm), lm.context_length)
    bank_id = bank["textbank_id"][0].as_py()
    if not intact(layout.textbank_file(bank_id)):
        write_table(bank, layout.textbank_file(bank_id), TEXTS)
    report |= {"source": source, "file": str(path), "n_texts": bank.num_rows, "generator": fmt}
    report["truncated"] = sum(bool(v) for v in bank["truncated"].to_pylist())
    write_text(json.dumps(report, indent=2), layout.textbank_report(bank_id))
    log.info("imported %s as text bank %s: %d texts", path, bank_id, bank.num_rows)
    stored = str(layout.textbank_file(bank_id))
    return StoredBank(bank_id, bank.num_rows, stored, n_classes=len(classnames), report=report)
