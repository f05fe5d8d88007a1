"""Text bank rows: content-hashed text ids, the bank id, and class-name prompts from templates."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa

from coderflow.storage.layout import content_id, text_id
from coderflow.storage.schemas import TEXT_TYPES, TEXTS
from coderflow.tasks.texts.clip_templates import OPENAI_IMAGENET_TEMPLATES

# CLIP's 80 ImageNet templates; used when a dataset ships no templates.
DEFAULT_TEMPLATES: tuple[str, ...] = OPENAI_IMAGENET_TEMPLATES


def text_classnames(override: Sequence[str] | None, classnames: Sequence[str]) -> list[str]:
    """The class names the texts are written with: `override` (texts.classnames, in class order) or the dataset's."""
    if not override:
        return list(classnames)
    if len(override) != len(classnames):
        raise ValueError(
            f"texts.classnames has {len(override)} names for {len(classnames)} classes ({list(classnames)[:5]}...): "
            "give one name per class, in the dataset's class order"
        )
    return list(override)


@dataclass(frozen=True)
class Text:
    """One generated text about a class (before it gets ids)."""

    class_index: int
    text_type: str
    text: str
    source: str
    other_class_index: int | None = None


def fill_template(template: str, class_name: str, grammar: bool = False) -> str:
    if "{c}" not in template:
        raise ValueError(f"template {template!r} has no '{{c}}' placeholder: write it like 'a photo of a {{c}}.'")
    return fill(template, grammar=grammar, c=class_name)


_ARTICLE = re.compile(r"\b(a|an|A|An) \{(\w+)\}")
_MANY = re.compile(r"\b(many|Many) \{(\w+)\}")


@cache
def _inflect() -> Any:
    import inflect

    return inflect.engine()


def is_plural(name: str) -> bool:
    """Whether a class name reads as a plural noun ('dots', 'horizontal stripes', 'mice'; not 'sheep')."""
    last = name.split()[-1] if name.split() else name
    singular = _inflect().singular_noun(last.lower())
    return bool(singular) and singular != last.lower()


def fill(template: str, grammar: bool = False, **values: str) -> str:
    """Put values into `{key}` placeholders by plain replacement (class names may hold braces). With `grammar`, an
    article before a placeholder agrees with its value ('an apple'; none before a plural: 'dots similar to ...') and
    'many {c}' takes the plural ('many circles'), using the `inflect` library."""
    if grammar:

        def article(m: re.Match[str]) -> str:
            value = values.get(m[2])
            if value is None:
                return m[0]
            if is_plural(value):
                return "{" + m[2] + "}"
            word = _inflect().a(value).split(" ", 1)[0]
            return (word.capitalize() if m[1][0].isupper() else word) + " {" + m[2] + "}"

        def many(m: re.Match[str]) -> str:
            value = values.get(m[2])
            if value is None or is_plural(value):
                return m[0]
            return f"{m[1]} {_inflect().plural_noun(value)}"

        template = _MANY.sub(many, _ARTICLE.sub(article, template))
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def template_texts(classnames: Sequence[str], templates: Sequence[str], grammar: bool = False) -> list[Text]:
    """The prompt ensemble (text_type 'template'): every template filled with every class name (CLIP's templates
    verbatim unless `grammar`)."""
    return [
        Text(ci, "template", fill_template(t, name, grammar), "template")
        for ci, name in enumerate(classnames)
        for t in templates
    ]


def name_texts(classnames: Sequence[str], name_template: str, grammar: bool = False) -> list[Text]:
    """CODER's class-name prompt (text_type 'name'): one per class (CVPR24-CODER CODER/CODER.py:50-63)."""
    return [
        Text(ci, "name", fill_template(name_template, name, grammar), "name-template")
        for ci, name in enumerate(classnames)
    ]


def build_bank(
    texts: Iterable[Text],
    classnames: Sequence[str],
    token_counts: Sequence[int] | None = None,
    context_length: int = 77,
) -> pa.Table:
    """Rows of a text bank in a canonical order, deduplicated; the bank id is a hash of those rows.

    token_counts, when given, is aligned with `texts` and fills n_tokens/truncated.
    """
    items = list(texts)
    counts = list(token_counts) if token_counts is not None else [None] * len(items)
    if len(counts) != len(items):
        raise ValueError(f"token_counts has {len(counts)} entries for {len(items)} texts")
    seen: set[tuple] = set()
    rows = []
    for item, n in zip(items, counts, strict=True):
        if item.text_type not in TEXT_TYPES:
            raise ValueError(f"text_type {item.text_type!r} is not one of {TEXT_TYPES}")
        if not 0 <= item.class_index < len(classnames):
            raise ValueError(f"class_index {item.class_index} is out of range for {len(classnames)} classes")
        text = " ".join(item.text.split())
        key = (item.class_index, item.text_type, item.other_class_index, text)
        if not text or key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "text_id": text_id(text),
                "class_index": item.class_index,
                "class_name": classnames[item.class_index],
                "text_type": item.text_type,
                "other_class_index": item.other_class_index,
                "text": text,
                "source": item.source,
                "n_tokens": n,
                "truncated": None if n is None else n > context_length,
            }
        )
    order = {t: i for i, t in enumerate(TEXT_TYPES)}
    rows.sort(
        key=lambda r: (
            r["class_index"],
            order[r["text_type"]],
            -1 if r["other_class_index"] is None else r["other_class_index"],
        )
    )
    bank_id = content_id(
        "bank",
        *(f"{r['class_index']}|{r['class_name']}|{r['text_type']}|{r['other_class_index']}|{r['text']}" for r in rows),
    )
    for i, r in enumerate(rows):
        r["textbank_id"] = bank_id
        r["text_index"] = i
    return pa.Table.from_pylist(rows, schema=TEXTS)


def bank_summary(bank: pa.Table, report: dict[str, Any], price_per_1k: float | None = None) -> dict[str, Any]:
    """Per text type: rows kept, classes covered, phrases dropped by reason, LLM requests and tokens (and cost at
    `price_per_1k` tokens); the classes left without att or ana texts; rows per class and type."""
    types = bank["text_type"].to_pylist()
    names = bank["class_name"].to_pylist()
    classes = list(dict.fromkeys(names))
    generator = report.get("generator") if isinstance(report.get("generator"), dict) else {}
    dropped: dict[str, dict[str, int]] = {k: dict(v) for k, v in (generator.get("dropped") or {}).items()}
    for d in report.get("dropped") or []:  # the bank's own filters (look-alikes near a class, synonyms)
        reason = re.sub(r" '.*", "", str(d.get("reason", "")).split(" (")[0])  # "near class 'cat'" -> "near class"
        dropped.setdefault(d["type"], {})[reason] = dropped.setdefault(d["type"], {}).get(reason, 0) + 1
    by_type = generator.get("by_type") or {}
    per_class: dict[str, dict[str, int]] = {c: {} for c in classes}
    for t, c in zip(types, names, strict=True):
        per_class[c][t] = per_class[c].get(t, 0) + 1
    summary: dict[str, Any] = {"types": {}, "per_class": per_class}
    for t in dict.fromkeys([*TEXT_TYPES, *dropped]):
        kept = types.count(t)
        if not kept and t not in dropped and t not in by_type:
            continue
        row: dict[str, Any] = {
            "kept": kept,
            "classes": sum(1 for c in classes if per_class[c].get(t)),
            "dropped": dropped.get(t, {}),
            "requests": by_type.get(t, {}).get("requests", 0),
            "requested": by_type.get(t, {}).get("requested", 0),  # phrases asked for
            "received": by_type.get(t, {}).get("received", 0),  # phrases in the replies, before the filter
            "tokens": by_type.get(t, {}).get("tokens", 0),
        }
        if price_per_1k is not None:
            row["cost"] = round(row["tokens"] / 1000 * price_per_1k, 6)
        summary["types"][t] = row
    summary["classes_without"] = {
        t: [c for c in classes if not per_class[c].get(t)] for t in ("att", "ana") if t in summary["types"]
    }
    return summary


def why_without(kind: str, missing: Sequence[str], classnames: Sequence[str], report: dict[str, Any]) -> str:
    """Why each class of `missing` has no `kind` texts: its candidates the bank's filter dropped, by reason (a
    look-alike that is a class of the dataset, or near one), else that nothing usable came back; first 20 classes."""
    index = {c: i for i, c in enumerate(classnames)}
    reasons: dict[int, dict[str, int]] = {}
    for d in report.get("dropped") or []:
        if d.get("type") == kind and d.get("class_index") is not None:
            reason = str(d.get("reason", "")).split(" (")[0]  # "near class 'cat' (cosine ...)" -> "near class 'cat'"
            by = reasons.setdefault(int(d["class_index"]), {})
            by[reason] = by.get(reason, 0) + 1
    generator = report.get("generator")
    filtered = (generator.get("dropped") or {}).get(kind) if isinstance(generator, dict) else None
    nothing = "no candidate came back" + (
        f" (the reply filter dropped {', '.join(f'{n} {r}' for r, n in filtered.items())} over all classes)"
        if filtered else ""
    )  # fmt: skip
    parts = []
    for name in missing[:20]:
        by = reasons.get(index.get(name, -1))
        parts.append(f"{name}: " + ("; ".join(f"{n} dropped as {r}" for r, n in by.items()) if by else nothing))
    return "; ".join(parts) + (f"; and {len(missing) - 20} more" if len(missing) > 20 else "")
