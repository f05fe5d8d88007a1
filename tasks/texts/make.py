"""Making a whole text bank from a TextsConfig: the generator, one-vs-one pairs, generation and token counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from coderflow.config import ClassifyConfig, TextsConfig
from coderflow.tasks.classify.methods import LOGIT_SCALE, class_mean_embeddings, coder_scores, waffle_texts
from coderflow.tasks.embed.encode import encode_texts, token_counts
from coderflow.tasks.embed.model import LoadedModel
from coderflow.tasks.texts.bank import DEFAULT_TEMPLATES, Text, build_bank, name_texts, template_texts
from coderflow.tasks.texts.generate import TextGenerator, generate_texts
from coderflow.tasks.texts.pairs import confused_pairs, nearest_pairs


def make_generator(
    cfg: TextsConfig, llm_cache_dir: Path, embed: Callable[[list[str]], np.ndarray] | None = None
) -> TextGenerator:
    """The configured generator: WordNet offline (`embed` chooses the synonyms' sense), or an OpenAI-compatible LLM
    with an on-disk reply cache."""
    if cfg.generator == "offline":
        from coderflow.tasks.texts.offline import WordNetGenerator

        return WordNetGenerator(embed=embed)
    from coderflow.tasks.texts.llm import LLMGenerator

    llm = cfg.llm
    return LLMGenerator(
        model=llm.model, cache_dir=llm_cache_dir, base_url=llm.base_url, max_workers=llm.max_concurrency,
        timeout=llm.timeout, max_retries=llm.max_retries, temperature=llm.temperature, max_tokens=llm.max_tokens,
    )  # fmt: skip


Embed = Callable[[Sequence[str]], np.ndarray]


def ovo_pairs(
    cfg: TextsConfig, classnames: Sequence[str], templates: Sequence[str], embed: Embed, images: np.ndarray | None
) -> tuple[list[tuple[int, int]], str]:
    """Class pairs for one-vs-one texts chosen before generation ('nearest', or 'confused' with image embeddings)."""
    if cfg.ovo_budget == 0 or len(classnames) < 2:
        return [], "none"
    names = template_texts(classnames, templates)
    t = embed([x.text for x in names])
    w = class_mean_embeddings(t, np.array([x.class_index for x in names]), len(classnames))
    if cfg.ovo_pairs == "confused" and images is not None and len(images):
        return confused_pairs(100.0 * images @ w.T, cfg.ovo_budget), "confused"
    return nearest_pairs(w, cfg.ovo_budget), "nearest"


def consulted_pairs(
    texts: Sequence[Text], n_classes: int, embed: Embed, images: np.ndarray, budget: int, rerank: tuple[float, int]
) -> list[tuple[int, int]]:
    """The class pairs CODER* will consult: CODER scores of the images from the bank's other texts, then the pairs
    that co-occur most among the top `rerank[1]` classes of images whose margin is below `rerank[0]` (no labels)."""
    cosines = images @ embed([t.text for t in texts]).T
    meta = (np.array([t.class_index for t in texts]), np.array([t.text_type for t in texts], dtype=object))
    scores = LOGIT_SCALE * coder_scores(cosines, *meta, n_classes)
    return confused_pairs(scores, budget, top_k=rerank[1], max_gap=rerank[0])


def make_bank(
    classnames: Sequence[str],
    templates: Sequence[str],
    cfg: TextsConfig,
    lm: LoadedModel,
    llm_cache_dir: Path,
    images: np.ndarray | None = None,
    rerank: tuple[float, int] = (0.1, 5),
    embed: Embed | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The bank table and a report (counts, dropped candidates, pairs, generator usage, classes not found).

    `embed`: text embeddings for the look-alike filter, pair choice and synonym senses (a TextStore's `encode`, so the
    embedding stage reuses them); default: encode with `lm`.

    ovo_pairs 'consulted' with image embeddings generates the other types first and picks the one-vs-one pairs from
    their CODER scores (see consulted_pairs; `rerank` = CODER*'s (threshold, k)); without images it is 'nearest'.
    """
    templates = list(templates) or list(DEFAULT_TEMPLATES)
    embed = embed or (lambda xs: encode_texts(list(xs), lm))
    generated = [t for t in cfg.types if t not in ("name", "template")]
    report: dict[str, Any] = {"generator": cfg.generator, "types": list(cfg.types)}
    if generated:
        generator = make_generator(cfg, llm_cache_dir, embed=embed)

        def generate(types: list[str], pairs: list[tuple[int, int]]) -> tuple[list[Text], Any]:
            return generate_texts(
                classnames, templates, generator, types, embed=embed, pairs=pairs,
                n_att=cfg.n_att, n_ana=cfg.n_ana, n_syno=cfg.n_syno, n_ovo=cfg.n_ovo,
                ana_max_cosine=cfg.ana_max_cosine, ana_retries=cfg.ana_retries, name_template=cfg.name_template,
                att_template=cfg.att_template, ana_template=cfg.ana_template, ovo_templates=cfg.ovo_templates,
                grammar=cfg.grammar,
            )  # fmt: skip

        consulted = "ovo" in generated and cfg.ovo_pairs == "consulted" and images is not None and len(images) > 0
        if consulted and cfg.ovo_budget > 0 and len(classnames) > 1:
            texts, gen_report = generate([t for t in generated if t != "ovo"], [])
            pairs = consulted_pairs(texts, len(classnames), embed, images, cfg.ovo_budget, rerank)
            ovo, ovo_report = generate(["ovo"], pairs)
            texts += [t for t in ovo if t.text_type == "ovo"]
            gen_report.counts["ovo"] = ovo_report.counts.get("ovo", 0)
            gen_report.dropped += ovo_report.dropped
            gen_report.generator = ovo_report.generator  # the generator's totals after both stages
            how = "consulted"
        else:
            pairs, how = ovo_pairs(cfg, classnames, templates, embed, images) if "ovo" in generated else ([], "none")
            texts, gen_report = generate(generated, pairs)
        report |= gen_report.to_dict() | {"pairs": [list(p) for p in pairs], "pairs_from": how}
        not_found = getattr(generator, "not_found", None)
        if not_found is not None:
            report["not_found"] = not_found(classnames)
    else:
        every = cfg.grammar == "all"
        texts = template_texts(classnames, templates, every) + name_texts(classnames, cfg.name_template, every)
    bank = build_bank(texts, classnames, token_counts([t.text for t in texts], lm), lm.context_length)
    report["n_texts"] = bank.num_rows
    report["truncated"] = sum(bool(v) for v in bank["truncated"].to_pylist())
    return bank, report


def waffle_bank(classnames: Sequence[str], classify: ClassifyConfig, lm: LoadedModel, seed: int) -> pa.Table:
    """WaffleCLIP prompts (random word / character descriptors, seeded) as a bank of 'name' rows of its own."""
    from coderflow.tasks.texts.offline import waffle_vocabulary

    prompts = waffle_texts(classnames, n_pairs=classify.waffle_pairs, seed=seed, vocabulary=waffle_vocabulary())
    source = f"waffle:seed={seed}"
    texts = [Text(ci, "name", p, source) for ci, ps in enumerate(prompts) for p in ps]
    return build_bank(texts, classnames, token_counts([t.text for t in texts], lm), lm.context_length)
