"""Reading LLM replies: tolerant parsing of phrase lists, and the filter that drops what is not a usable phrase."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from coderflow.console import printable

MAX_ITEM_CHARS = 120


# tolerant parsing ----------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?')  # a JSON string, and the colon when it is a key
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+\s*[.):]|\(\d+\)|[a-z][.)])\s+(.+)$")


def _items_from_json(data: Any, key: str) -> list[str] | None:
    if isinstance(data, dict):
        value = data.get(key)
        if not isinstance(value, list):
            value = next((v for v in data.values() if isinstance(v, list)), None)
        return None if value is None else _items_from_json(value, key)
    if isinstance(data, list):
        out = []
        for item in data:
            if isinstance(item, dict):
                item = next((v for v in item.values() if isinstance(v, str)), None)
            if isinstance(item, str | int | float) and not isinstance(item, bool):
                out.append(str(item))
        return out
    return None


def _json_spans(text: str) -> list[str]:
    spans = [*_FENCE.findall(text), text]
    for opener, closer in ("{}", "[]"):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            spans.append(text[start : end + 1])
    return spans


def parse_items(text: str | None, key: str = "items") -> list[str]:
    """Phrases from a free-form reply: a JSON object or list (in code fences or not), else bullet/numbered lines,
    else the non-empty lines."""
    text = (text or "").strip()
    if not text:
        return []
    for span in _json_spans(text):
        try:
            items = _items_from_json(json.loads(span), key)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            continue
        if items is not None:
            return items
    body = (_FENCE.findall(text + "```") or [text])[0].strip() if "```" in text else text
    cut_short = body.count("{") + body.count("[") > body.count("}") + body.count("]")
    if body.startswith(("{", "[")) and cut_short:  # JSON cut at the length limit: keep its complete strings
        return [json.loads(f'"{s}"') for s, colon in _STRING.findall(body) if not colon]
    lines = [ln for ln in text.replace("```", "\n").splitlines() if ln.strip()]
    bullets = [m.group(1) for m in map(_BULLET.match, lines) if m]
    if bullets:
        return bullets
    return [ln for ln in lines if not ln.rstrip().endswith(":") and not ln.strip().startswith(("{", "}", "[", "]"))]


# the examples the prompts give: a reply that copies one says nothing about the class
PROMPT_EXAMPLES = frozenset(
    {"a long curved beak", "long curved beak", "a wolf", "wolf", "a shorter tail", "shorter tail"}
)
# a longer phrase holding one of the multi-word examples copies it too ("... which has a long curved beak")
_EXAMPLE_INSIDE = re.compile(r"\b(?:long curved beak|shorter tail)\b", re.I)
MAX_ITEM_WORDS = 12
_URL = re.compile(r"https?://|www\.|\.(?:com|org|net)\b", re.I)
_REPEAT = re.compile(r"_{2,}|(?<![a-z])([a-z]+)(?:[\s_]+\1)+(?![a-z])", re.I)


def item_problem(text: str, subject: str = "") -> str | None:
    """Why a cleaned phrase is not kept (a reason counted in the bank's report), or None when it is a phrase."""
    low = text.lower()
    subjects = {" ".join(s.lower().split()) for s in subject.split("|") if s.strip()}
    if not text:
        return "empty"
    if printable(text) != text:  # ESC, C1 or bidi controls: a terminal showing the text later would act on them
        return "control characters"
    if text.startswith("<") and text.endswith(">"):
        return "placeholder"
    if low in PROMPT_EXAMPLES or _EXAMPLE_INSIDE.search(text):
        return "copies the prompt's example"
    if _URL.search(text):
        return "url"
    if _REPEAT.search(text):
        return "repeated words or underscores"
    if len(text) > MAX_ITEM_CHARS or len(text.split()) > MAX_ITEM_WORDS or ". " in text:
        return "longer than a phrase"
    bare = low.removeprefix("a ").removeprefix("an ").removeprefix("the ")
    if low in subjects or bare in subjects or any(bare.startswith(s + " ") for s in subjects) or " which has " in low:
        return "restates the class"  # the class itself, or a phrase opening with it / echoing "{c} which has"
    return None


def clean_items(items: Sequence[str], n: int, subject: str = "", dropped: dict[str, int] | None = None) -> list[str]:
    """Strip quotes, list markers and end punctuation; drop what is not a usable phrase (see item_problem) and
    repeats, counting the reasons in `dropped`; keep n."""
    out: dict[str, str] = {}
    for item in items:
        m = _BULLET.match(item)
        text = " ".join((m.group(1) if m else item).split()).strip(" \"'`*.,;:")
        problem = item_problem(text, subject) or ("duplicate" if text.lower() in out else None)
        if problem is None:
            out[text.lower()] = text
        elif dropped is not None:
            dropped[problem] = dropped.get(problem, 0) + 1
    return list(out.values())[:n]
