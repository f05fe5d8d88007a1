"""Text orchestration (ana filtering and replacement, synonym substitution, ovo pairs) and pair selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from coderflow.tasks.texts.bank import build_bank
from coderflow.tasks.texts.generate import filter_analogies, generate_texts, synonym_texts
from coderflow.tasks.texts.pairs import confused_pairs, nearest_pairs

CLASSES = ["cat", "dog", "tiger"]
# hand-made embedding: each prompt is the unit vector of its keyword
VECTORS = {
    "cat": [1.0, 0.0, 0.0],
    "kitten": [0.95, np.sqrt(1 - 0.95**2), 0.0],  # cosine 0.95 to cat
    "lynx": [0.6, 0.8, 0.0],  # cosine 0.6 to cat
    "dog": [0.0, 1.0, 0.0],
    "wolf": [0.0, 0.8, 0.6],
    "tiger": [0.0, 0.0, 1.0],
    "puma": [0.5, 0.0, np.sqrt(0.75)],
    "lion": [0.0, 0.6, 0.8],
}


def embed(texts: list[str]) -> np.ndarray:
    return np.array([VECTORS[t.removeprefix("a photo of a ").removesuffix(".")] for t in texts], dtype=np.float32)


class CannedGenerator:
    """A generator answering from fixed lists; analogies pop the next answer per class on every call."""

    source = "canned"

    def __init__(self, ana: dict[str, list[list[str]]], syno: dict[str, list[str]] | None = None) -> None:
        self.ana = {k: list(v) for k, v in ana.items()}
        self.syno = syno or {}
        self.ana_calls: list[tuple[list[str], int, list[list[str]]]] = []

    def attributes(self, classnames: Sequence[str], n: int) -> list[list[str]]:
        return [[f"{c} fur", " "][:n] for c in classnames]

    def analogies(self, classnames: Sequence[str], n: int, exclude=None) -> list[list[str]]:
        self.ana_calls.append((list(classnames), n, [list(e) for e in exclude or []]))
        return [self.ana[c].pop(0) if self.ana.get(c) else [] for c in classnames]

    def synonyms(self, classnames: Sequence[str], n: int) -> list[list[str]]:
        return [self.syno.get(c, [])[:n] for c in classnames]

    def differences(self, pairs: Sequence[tuple[str, str]], n: int) -> list[list[str]]:
        return [[f"no {b} ears"] for a, b in pairs]

    def report(self) -> dict[str, Any]:
        return {"source": self.source}


def test_filter_analogies_drops_classes_and_near_duplicates():
    kept, dropped = filter_analogies(CLASSES, [["kitten", "Dog.", "lynx", "lynx"], ["wolf"], []], embed, 0.9)
    assert kept == [["lynx"], ["wolf"], []]
    assert [(d["text"], d["reason"].split(" (")[0]) for d in dropped] == [
        ("Dog", "is a class of the dataset"),
        ("kitten", "near class 'cat'"),
    ]
    assert filter_analogies(CLASSES, [["kitten"], [], []], embed, 0.99)[0] == [["kitten"], [], []]
    assert filter_analogies(CLASSES, [["kitten"], [], []], None)[0] == [["kitten"], [], []]  # no embed: names only


def test_filter_analogies_checks_the_embed_output():
    with pytest.raises(ValueError, match="one row per text"):
        filter_analogies(CLASSES, [["lynx"], [], []], lambda texts: np.zeros((1, 3)), 0.9)


def test_ana_replacements_are_requested_with_exclusions_and_bounded():
    gen = CannedGenerator({"cat": [["kitten", "dog", "lynx"], ["puma", "lion", "wolf"]], "tiger": [["lion"]]})
    texts, report = generate_texts(CLASSES, ["a photo of a {c}."], gen, types=["ana"], embed=embed, n_ana=3)
    ana = {(t.class_index, t.text) for t in texts if t.text_type == "ana"}
    assert ana == {
        (0, "a cat similar to lynx."),
        (0, "a cat similar to puma."),
        (0, "a cat similar to lion."),
        (2, "a tiger similar to lion."),
    }
    # round 2 asks the classes still short that answered something (not dog), excluding what they said before
    assert gen.ana_calls[1] == (["cat", "tiger"], 2, [["kitten", "dog", "lynx"], ["lion"]])
    assert report.ana_rounds == len(gen.ana_calls) == 2  # cat is full, tiger answered nothing: done


def test_ana_rounds_are_bounded():
    gen = CannedGenerator({"cat": [["dog"]] * 10})
    texts, report = generate_texts(CLASSES, [], gen, types=["ana"], embed=embed, ana_retries=2)
    assert report.ana_rounds == len(gen.ana_calls) == 3
    assert not [t for t in texts if t.text_type == "ana"] and len(report.dropped) == 3


def test_synonyms_are_substituted_and_class_names_dropped():
    texts, dropped = synonym_texts(CLASSES, [["kitty", "Cat", "Dog", "house cat"], [], []], ["a photo of a {c}."], "s")
    assert [t.text for t in texts] == ["a photo of a kitty.", "a photo of a house cat."]
    assert all(t.class_index == 0 and t.text_type == "syno" for t in texts)
    assert {d["text"] for d in dropped} == {"Cat", "Dog"}


def test_generate_all_types_and_ovo_pairs_both_ways():
    """CODER's layout: the ensemble as 'template' rows, ONE 'name' prompt per class, synonyms in the name template,
    each difference in every one-vs-one paraphrase (CVPR24-CODER CODER/template.py)."""
    gen = CannedGenerator({"cat": [["lynx"]]}, syno={"dog": ["hound"]})
    texts, report = generate_texts(CLASSES, ["a photo of a {c}.", "art of a {c}."], gen, pairs=[(0, 1), (1, 0)])
    ovo = sorted((t.class_index, t.other_class_index, t.text) for t in texts if t.text_type == "ovo")
    assert len(ovo) == 2 * 7
    assert (0, 1, "Because of no dog ears, cat is different from dog.") in ovo
    assert (1, 0, "Differences in no cat ears usage separate dog from cat.") in ovo
    assert "cat which has cat fur" in {t.text for t in texts}
    assert [t.text for t in texts if t.text_type == "name"] == ["a photo of cat", "a photo of dog", "a photo of tiger"]
    assert [t.text for t in texts if t.text_type == "syno"] == ["a photo of hound"]
    assert report.counts == {"template": 6, "name": 3, "att": 3, "ana": 1, "syno": 1, "ovo": 14}
    assert build_bank(texts, CLASSES).num_rows == len(texts)

    one, _ = generate_texts(
        CLASSES, ["a photo of a {c}."], gen, types=["ovo"], pairs=[(0, 1)], ovo_templates=["{a} vs {b}: {x}"],
        name_template="a photo of a {c}, a type of pet.",
    )  # fmt: skip
    assert sorted(t.text for t in one if t.text_type == "ovo") == ["cat vs dog: no dog ears", "dog vs cat: no cat ears"]
    assert next(t.text for t in one if t.text_type == "name") == "a photo of a cat, a type of pet."


def test_generate_rejects_bad_arguments():
    gen = CannedGenerator({})
    with pytest.raises(ValueError, match="unknown text types"):
        generate_texts(CLASSES, [], gen, types=["att", "colour"])
    with pytest.raises(ValueError, match="out of range"):
        generate_texts(CLASSES, [], gen, types=["ovo"], pairs=[(0, 7)])


# pair selection -------------------------------------------------------------------------------------------
LOGITS = np.array(
    [
        [3.0, 3.0, 0.0, -9.0],  # uncertain; top-3 {0, 1, 2}
        [-9.0, 0.0, 3.0, 3.0],  # uncertain; top-3 {1, 2, 3}
        [0.0, 0.0, 0.0, 10.0],  # confident: ignored unless max_gap > 1
        [0.0, 3.0, 3.0, -9.0],  # uncertain; top-3 {0, 1, 2}
    ]
)


def test_confused_pairs_counts_top_k_co_occurrences():
    # counts: (1,2)=3, (0,1)=2, (0,2)=2, (1,3)=1, (2,3)=1
    assert confused_pairs(LOGITS, budget=3, top_k=3) == [(1, 2), (0, 1), (0, 2)]
    assert confused_pairs(LOGITS, budget=10, top_k=3) == [(1, 2), (0, 1), (0, 2), (1, 3), (2, 3)]
    assert confused_pairs(LOGITS, budget=10, top_k=2) == [(0, 1), (1, 2), (2, 3)]
    assert confused_pairs(LOGITS, budget=0) == []
    assert confused_pairs(LOGITS[2:3], budget=5) == []


def test_confused_pairs_with_a_wide_gap_counts_confident_samples_too():
    assert confused_pairs(LOGITS, budget=10, top_k=2, max_gap=1.01) == [(0, 1), (0, 3), (1, 2), (2, 3)]


def test_nearest_pairs_by_cosine():
    emb = np.array([[1.0, 0.0], [4.0, 3.0], [0.0, 2.0], [-1.0, 0.0]])  # cosines: 01=.8, 12=.6, 02=0, 23=0, 13=-.8
    assert nearest_pairs(emb, budget=3) == [(0, 1), (1, 2), (0, 2)]
    assert nearest_pairs(emb, budget=100)[-1] == (0, 3)
    assert nearest_pairs(emb, budget=0) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nearest_pairs(np.array([[1.0, 0.0], [0.0, 0.0]]), 1), "all zeros"),
        (lambda: nearest_pairs(np.ones((1, 3)), 1), "classes>=2"),
        (lambda: confused_pairs(np.ones(4), 1), "samples, classes"),
        (lambda: confused_pairs(LOGITS, 1, top_k=1), "at least 2"),
        (lambda: nearest_pairs(np.eye(3), -1), "negative"),
    ],
)
def test_pair_selection_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bank_summary_counts_types_drops_and_classes_without_texts():
    from coderflow.tasks.texts.bank import Text, bank_summary

    texts = [
        Text(0, "name", "a photo of cat", "s"),
        Text(1, "name", "a photo of dog", "s"),
        Text(0, "att", "cat which has fur", "llm"),
    ]
    bank = build_bank(texts, ["cat", "dog"])
    report = {
        "generator": {
            "dropped": {"att": {"url": 2}},
            "by_type": {"att": {"requests": 2, "requested": 10, "received": 4, "tokens": 300}},
        },
        "dropped": [{"type": "ana", "class_index": 0, "text": "dog", "reason": "is a class of the dataset"}],
    }
    s = bank_summary(bank, report, price_per_1k=0.5)
    assert s["types"]["att"] == {
        "kept": 1,
        "classes": 1,
        "dropped": {"url": 2},
        "requests": 2,
        "requested": 10,
        "received": 4,
        "tokens": 300,
        "cost": 0.15,
    }
    assert s["types"]["ana"]["dropped"] == {"is a class of the dataset": 1} and s["types"]["ana"]["kept"] == 0
    assert s["classes_without"] == {"att": ["dog"], "ana": ["cat", "dog"]}
    assert s["per_class"] == {"cat": {"name": 1, "att": 1}, "dog": {"name": 1}}


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("a {c} similar to {x}.", {"c": "dots", "x": "a wolf"}, "dots similar to a wolf."),
        ("a {c} similar to {x}.", {"c": "apple", "x": "a pear"}, "an apple similar to a pear."),
        ("A {c} photo", {"c": "owl"}, "An owl photo"),
        ("a photo of many {c}.", {"c": "circle"}, "a photo of many circles."),
        ("a photo of many {c}.", {"c": "horizontal stripes"}, "a photo of many horizontal stripes."),
        (
            "a {a} which, unlike a {b}, has {x}.",
            {"a": "mice", "b": "hour", "x": "fur"},
            "mice which, unlike an hour, has fur.",
        ),
        ("a {c} similar to sheep.", {"c": "sheep"}, "a sheep similar to sheep."),  # same form in both numbers
    ],
)
def test_grammar_agrees_with_plural_and_vowel_names(template, values, expected):
    from coderflow.tasks.texts.bank import fill

    assert fill(template, grammar=True, **values) == expected
    assert fill(template, **values) == template.format(**values)  # verbatim without grammar


def test_generated_texts_are_grammatical_and_clip_templates_stay_verbatim():
    def make(grammar: str) -> set[tuple[str, str]]:
        gen = CannedGenerator({"dots": [["confetti"]]})
        texts, _ = generate_texts(
            ["dots", "cat", "tiger"], ["a photo of many {c}."], gen, types=["ana"], grammar=grammar
        )
        return {(t.text_type, t.text) for t in texts}

    default = make("generated")
    assert ("ana", "dots similar to confetti.") in default
    assert ("template", "a photo of many cat.") in default  # CLIP's template, verbatim
    assert ("template", "a photo of many cats.") in make("all")
    assert ("ana", "a dots similar to confetti.") in make("off")
