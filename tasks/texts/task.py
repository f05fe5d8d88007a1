"""Prefect tasks: build and store a text bank for a dataset's classes."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from coderflow.config import ModelConfig
from coderflow.storage.layout import Layout
from coderflow.storage.parquet_io import write_table, write_text
from coderflow.storage.schemas import TEXTS
from coderflow.storage.shards import read_lines, validate_classnames
from coderflow.tasks.embed.encode import token_counts
from coderflow.tasks.embed.model import load_model
from coderflow.tasks.texts.bank import DEFAULT_TEMPLATES, build_bank, name_texts


def dataset_classes(layout: Layout, dataset: str) -> tuple[list[str], list[str]]:
    """The class names and stored templates of an ingested dataset."""
    path = layout.classnames_file(dataset)
    if not path.exists():
        raise FileNotFoundError(f"dataset {dataset!r} is not ingested in {layout.root}: run `coderflow ingest` first")
    names = validate_classnames(read_lines(path), str(path))
    tpath = layout.templates_file(dataset)
    return names, read_lines(tpath) if tpath.exists() else []


@task(name="build-name-bank")
def build_name_bank(
    dataset: str, model: ModelConfig, workdir: str, templates: list[str] | None = None
) -> dict[str, Any]:
    """Class-name prompts from the given templates, else the dataset's, else CLIP's default list."""
    layout = Layout.at(workdir)
    classnames, stored = dataset_classes(layout, dataset)
    chosen = list(templates or stored or DEFAULT_TEMPLATES)
    texts = name_texts(classnames, chosen)
    lm = load_model(model.name, model.pretrained, model.device, model.precision)
    bank = build_bank(texts, classnames, token_counts([t.text for t in texts], lm), lm.context_length)
    bank_id = bank["textbank_id"][0].as_py()
    path = layout.textbank_file(bank_id)
    if not path.exists():
        write_table(bank, path, TEXTS)
    write_text(bank_id, layout.textbank_alias(dataset))
    n_trunc = sum(bool(v) for v in bank["truncated"].to_pylist())
    get_run_logger().info("text bank %s: %d texts, %d truncated", bank_id, bank.num_rows, n_trunc)
    return {"textbank_id": bank_id, "path": str(path), "n_texts": bank.num_rows, "n_classes": len(classnames)}
