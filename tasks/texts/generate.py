"""Orchestration of text generation: asks a generator for phrases, filters them and formats the text rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from coderflow.config import TextsConfig
from coderflow.tasks.texts.bank import DEFAULT_TEMPLATES, Text, fill, fill_template, name_texts, template_texts

_DEFAULTS = TextsConfig.model_fields
ATT_FORMAT: str = _DEFAULTS["att_template"].default  # CODER's templates (CVPR24-CODER CODER/template.py)
ANA_FORMAT: str = _DEFAULTS["ana_template"].default
OVO_TEMPLATES: tuple[str, ...] = _DEFAULTS["ovo_templates"].default
GENERATED_TYPES = ("att", "ana", "syno", "ovo")

Embed = Callable[[list[str]], np.ndarray]


class TextGenerator(Protocol):
    """What the offline (WordNet) and the LLM generators provide: raw phrases, aligned with the inputs."""

    source: str

    def attributes(self, classnames: Sequence[str], n: int) -> list[list[str]]: ...

    def analogies(
        self, classnames: Sequence[str], n: int, exclude: Sequence[Sequence[str]] | None = None
    ) -> list[list[str]]: ...

    def synonyms(self, classnames: Sequence[str], n: int) -> list[list[str]]: ...

    def differences(self, pairs: Sequence[tuple[str, str]], n: int) -> list[list[str]]: ...

    def report(self) -> dict[str, Any]: ...


@dataclass
class GenerationReport:
    """What happened: rows per type, dropped candidates with the reason, and the generator's own report."""

    counts: dict[str, int] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    ana_rounds: int = 0
    generator: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


def _clean(phrase: str) -> str:
    return " ".join(phrase.split()).strip(" .")


def filter_analogies(
    classnames: Sequence[str],
    candidates: Sequence[Sequence[str]],
    embed: Embed | None = None,
    max_cosine: float = 0.9,
    template: str = "a photo of a {c}.",
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Drop look-alikes that are a class of the dataset, or near one: the cosine between the candidate's prompt and
    any class's prompt (both `template` filled) above `max_cosine`. Returns (kept per class, dropped records)."""
    names = {_norm(c): i for i, c in enumerate(classnames)}
    kept: list[list[str]] = [[] for _ in classnames]
    dropped: list[dict[str, Any]] = []
    pending: list[tuple[int, str]] = []
    for ci, items in enumerate(candidates):
        for raw in items:
            thing = _clean(raw)
            if not thing:
                continue
            if _norm(thing) in names:
                dropped.append({"type": "ana", "class_index": ci, "text": thing, "reason": "is a class of the dataset"})
            else:
                pending.append((ci, thing))
    if embed is not None and pending:
        class_vecs = np.asarray(embed([fill_template(template, c) for c in classnames]), dtype=np.float32)
        cand_vecs = np.asarray(embed([fill_template(template, t) for _, t in pending]), dtype=np.float32)
        if class_vecs.shape[0] != len(classnames) or cand_vecs.shape[0] != len(pending):
            raise ValueError(
                f"embed returned {class_vecs.shape[0]}/{cand_vecs.shape[0]} rows for "
                f"{len(classnames)}/{len(pending)} texts: it must return one row per text"
            )
        cos = cand_vecs @ class_vecs.T
        nearest = cos.argmax(axis=1)
        for (ci, thing), near, best in zip(pending, nearest, cos.max(axis=1), strict=True):
            if best > max_cosine:
                reason = f"near class {classnames[near]!r} (cosine {best:.3f} > {max_cosine})"
                dropped.append({"type": "ana", "class_index": ci, "text": thing, "reason": reason})
            else:
                kept[ci].append(thing)
    else:
        for ci, thing in pending:
            kept[ci].append(thing)
    return [list(dict.fromkeys(k)) for k in kept], dropped


def synonym_texts(
    classnames: Sequence[str],
    synonyms: Sequence[Sequence[str]],
    templates: Sequence[str],
    source: str,
    grammar: bool = False,
) -> tuple[list[Text], list[dict[str, Any]]]:
    """Synonyms substituted into the name templates; drops a synonym equal to its own or another class's name and
    checks the substitution (the text holds the synonym and differs from the class-name prompt)."""
    names = {_norm(c) for c in classnames}
    texts: list[Text] = []
    dropped: list[dict[str, Any]] = []
    for ci, items in enumerate(synonyms):
        for raw in dict.fromkeys(_clean(s) for s in items):
            if not raw:
                continue
            if _norm(raw) in names:
                dropped.append({"type": "syno", "class_index": ci, "text": raw, "reason": "is a class name"})
                continue
            for template in templates:
                filled = fill_template(template, raw, grammar)
                if raw not in filled or filled == fill_template(template, classnames[ci], grammar):
                    reason = f"not substituted into {template!r}"
                    dropped.append({"type": "syno", "class_index": ci, "text": raw, "reason": reason})
                    continue
                texts.append(Text(ci, "syno", filled, source))
    return texts, dropped


def generate_texts(
    classnames: Sequence[str],
    templates: Sequence[str],
    generator: TextGenerator,
    types: Sequence[str] = GENERATED_TYPES,
    embed: Embed | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    n_att: int = 5,
    n_ana: int = 5,
    n_syno: int = 3,
    n_ovo: int = 3,
    ana_max_cosine: float = 0.9,
    ana_retries: int = 2,
    name_template: str = "a photo of {c}",
    att_template: str = ATT_FORMAT,
    ana_template: str = ANA_FORMAT,
    ovo_templates: Sequence[str] = OVO_TEMPLATES,
    grammar: str = "generated",
) -> tuple[list[Text], GenerationReport]:
    """The text rows of a bank: the prompt ensemble and one name prompt per class, plus the requested generated types.

    Texts are written with CODER's templates (CVPR24-CODER CODER/template.py): synonyms with the name template,
    attributes and look-alikes with their templates, each one-vs-one difference with every `ovo_templates` entry.

    embed(list[str]) -> L2-normalised rows, used to drop look-alikes too close to a class (skipped when None).
    pairs are class-index pairs for one-vs-other texts (both directions are written).
    """
    unknown = set(types) - set(GENERATED_TYPES)
    if unknown:
        raise ValueError(f"unknown text types {sorted(unknown)}: choose from {GENERATED_TYPES}")
    templates = list(templates) or list(DEFAULT_TEMPLATES)
    source = generator.source
    report = GenerationReport()
    own, every = grammar != "off", grammar == "all"  # generated texts / also the template ensemble and name prompts
    texts = template_texts(classnames, templates, every) + name_texts(classnames, name_template, every)

    if "att" in types:
        for ci, items in enumerate(generator.attributes(classnames, n_att)):
            texts += [
                Text(ci, "att", fill(att_template, own, c=classnames[ci], x=_clean(x)), source)
                for x in items
                if _clean(x)
            ]

    if "ana" in types:
        kept: list[list[str]] = [[] for _ in classnames]
        seen: list[list[str]] = [[] for _ in classnames]
        todo = list(range(len(classnames)))
        for round_ in range(ana_retries + 1):
            if not todo:
                break
            report.ana_rounds = round_ + 1
            asked = [classnames[ci] for ci in todo]
            missing = [n_ana - len(kept[ci]) for ci in todo]
            answers = generator.analogies(asked, max(missing), exclude=[seen[ci] for ci in todo])
            for ci, items in zip(todo, answers, strict=True):
                seen[ci] += [_clean(x) for x in items]
            per_class: list[list[str]] = [[] for _ in classnames]
            for ci, items in zip(todo, answers, strict=True):
                per_class[ci] = [x for x in items if _norm(_clean(x)) not in {_norm(k) for k in kept[ci]}]
            sub_kept, dropped = filter_analogies(classnames, per_class, embed, ana_max_cosine, templates[0])
            report.dropped += dropped
            for ci in todo:
                kept[ci] = (kept[ci] + sub_kept[ci])[:n_ana]
            # ask again only for classes that got something last time but are still short
            todo = [ci for ci, items in zip(todo, answers, strict=True) if items and len(kept[ci]) < n_ana]
        for ci, items in enumerate(kept):
            texts += [Text(ci, "ana", fill(ana_template, own, c=classnames[ci], x=x), source) for x in items]

    if "syno" in types:
        syno, dropped = synonym_texts(classnames, generator.synonyms(classnames, n_syno), [name_template], source, own)
        texts += syno
        report.dropped += dropped

    if "ovo" in types and pairs:
        directed = list(dict.fromkeys(d for a, b in pairs if a != b for d in ((a, b), (b, a))))
        for a, b in directed:
            if not (0 <= a < len(classnames) and 0 <= b < len(classnames)):
                raise ValueError(f"pair {(a, b)} is out of range for {len(classnames)} classes")
        answers = generator.differences([(classnames[a], classnames[b]) for a, b in directed], n_ovo)
        for (a, b), items in zip(directed, answers, strict=True):
            texts += [
                Text(a, "ovo", fill(t, own, a=classnames[a], b=classnames[b], x=_clean(x)), source, b)
                for x in items
                if _clean(x)
                for t in ovo_templates
            ]

    for t in texts:
        report.counts[t.text_type] = report.counts.get(t.text_type, 0) + 1
    report.generator = generator.report()
    return texts, report
