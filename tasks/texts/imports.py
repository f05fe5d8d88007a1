"""Published text files as text banks: DCLIP/WaffleCLIP descriptors, CuPL prompts, CLIP_benchmark templates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from coderflow.tasks.classify.methods import descriptor_sentence
from coderflow.tasks.texts.bank import Text

Format = Literal["dclip", "cupl", "clip-benchmark"]
FORMATS: tuple[str, ...] = ("dclip", "cupl", "clip-benchmark")


def read_json_lists(path: str | Path) -> dict[str, list[str]]:
    """A JSON object of string lists (class -> phrases), refusing anything else with the file named."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file {str(p)!r} not found: pass a JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}): pass a descriptor/prompt file") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    ):
        raise ValueError(f"{p}: expected a JSON object of lists of strings (name -> [text, ...])")
    return data


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def match_classes(classnames: Sequence[str], keys: Sequence[str]) -> tuple[dict[int, str], list[str], list[str]]:
    """Dataset class index -> file key, matched case-insensitively with '_' read as a space; and the dataset classes
    and file keys left unmatched."""
    by_key = {_key(k): k for k in keys}
    matched = {ci: by_key[_key(c)] for ci, c in enumerate(classnames) if _key(c) in by_key}
    used = set(matched.values())
    return matched, [c for ci, c in enumerate(classnames) if ci not in matched], [k for k in keys if k not in used]


def imported_texts(
    classnames: Sequence[str], data: dict[str, list[str]], fmt: Format, source: str, after_text: str = ""
) -> tuple[list[Text], dict[str, Any]]:
    """Rows of a bank from a class -> phrases file: DCLIP descriptors as 'att' rows "{c}, which (is/has/...) {d}"
    followed by `after_text` (DCLIP load.py: before_text + class + ', ' + sentence + after_text, after_text '.' for
    ImageNet), CuPL sentences as 'att' rows embedded as they are (their `source` marks them for `cupl`); and a report
    of what matched."""
    matched, missing, extra = match_classes(classnames, list(data))
    texts = []
    for ci, key in matched.items():
        for item in data[key]:
            item = " ".join(item.split())
            if not item:
                continue
            text = f"{classnames[ci]}, {descriptor_sentence(item)}{after_text}" if fmt == "dclip" else item
            texts.append(Text(ci, "att", text, source))
    empty = sorted({classnames[t] for t in matched} - {classnames[t.class_index] for t in texts})
    report = {
        "format": fmt, "matched": len(matched), "unmatched_classes": missing, "unmatched_keys": extra,
        "classes_without_texts": empty,  # matched, but nothing listed: dclip scores the name prompt, cupl the templates
    }  # fmt: skip
    return texts, report


def clip_benchmark_templates(data: dict[str, list[str]], key: str) -> list[str]:
    """One dataset's templates from CLIP_benchmark's en_zeroshot_classification_templates.json ({c} placeholders)."""
    if key not in data:
        raise ValueError(f"no templates for {key!r} in the file: choose one of {', '.join(sorted(data)[:20])} (--key)")
    templates = [t for t in data[key] if "{c}" in t]
    if not templates:
        raise ValueError(f"the templates of {key!r} have no '{{c}}' placeholder: is this a class-name file?")
    return templates


def export_bank(rows: list[dict[str, Any]], fmt: Format, key: str | None = None) -> dict[str, list[str]]:
    """A bank's rows as a published format: dclip {class: [descriptor]}, cupl {class: [sentence]} (att and ana rows),
    clip-benchmark {dataset `key`: [template]} as CLIP_benchmark's en_zeroshot_classification_templates.json (the
    template rows of class 0 with its name as {c})."""
    out: dict[str, list[str]] = {}
    if fmt == "clip-benchmark":
        if not key:
            raise ValueError("a clip-benchmark file keys templates by dataset: pass --key DATASET")
        first = [r for r in rows if r["text_type"] == "template" and r["class_index"] == 0]
        return {key: [r["text"].replace(r["class_name"], "{c}") for r in first]}
    for r in rows:
        if r["text_type"] not in ("att", "ana"):
            continue
        text = r["text"]
        if fmt == "dclip":
            text = _descriptor_of(text, r["class_name"])
        out.setdefault(r["class_name"], []).append(text)
    return out


def _descriptor_of(text: str, class_name: str) -> str:
    """The descriptor inside "{c}, which ... {d}" or "{c} which has {d}", else the text itself."""
    for prefix in (f"{class_name}, which is ", f"{class_name}, which has ", f"{class_name}, which ",
                   f"{class_name} which has "):  # fmt: skip
        if text.startswith(prefix):
            return text[len(prefix) :].rstrip(".")
    return text
