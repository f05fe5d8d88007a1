"""Texts built as the references build them: CLIP's 80 ImageNet templates as the fallback ensemble, DCLIP's
ImageNet descriptor sentences with the '.' its loader appends; a change of rule gives a new bank id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coderflow.config import TextsConfig
from coderflow.presets import load_preset, preset_names
from coderflow.tasks.texts.bank import DEFAULT_TEMPLATES, build_bank, template_texts
from coderflow.tasks.texts.imports import imported_texts

DESCRIPTORS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "descriptors"
needs_fixtures = pytest.mark.skipif(not DESCRIPTORS.is_dir(), reason="../shared/fixtures/descriptors not present")


def test_fallback_templates_are_clips_80_imagenet_templates():
    open_clip_metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    expected = tuple(t("{c}") for t in open_clip_metadata.OPENAI_IMAGENET_TEMPLATES)
    assert expected == DEFAULT_TEMPLATES and len(DEFAULT_TEMPLATES) == 80
    fallback = build_bank(template_texts(["cat"], DEFAULT_TEMPLATES), ["cat"])
    assert sorted(fallback["text"].to_pylist()) == sorted(
        t("cat") for t in open_clip_metadata.OPENAI_IMAGENET_TEMPLATES
    )


def _dclip_loader_sentence(descriptor: str) -> str:
    """classify_by_descriptions descriptor_strings.py make_descriptor_sentence (a plain prefix test)."""
    if descriptor.startswith("a") or descriptor.startswith("an"):
        return f"which is {descriptor}"
    if descriptor.startswith(("has", "often", "typically", "may", "can")):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


@needs_fixtures
def test_dclip_imagenet_sentences_end_with_the_loaders_period():
    """classify_by_descriptions load.py, ImageNet: after_text = '.', and each description is
    f"{before_text}{wordify(k)}{between_text}{make_descriptor_sentence(d)}{after_text}" with before_text '' and
    between_text ', '."""
    data = json.loads((DESCRIPTORS / "descriptors_imagenet.json").read_text(encoding="utf-8"))
    classnames = list(data)[:50]
    after = TextsConfig.model_validate(load_preset("imagenet")["config"]["texts"]).dclip_after_text
    assert after == "."
    texts, report = imported_texts(classnames, data, "dclip", "import:dclip:descriptors_imagenet.json", after)
    expected = [
        f"{k.replace('_', ' ')}, {_dclip_loader_sentence(' '.join(d.split()))}." for k in classnames for d in data[k]
    ]
    assert [t.text for t in texts] == expected and report["matched"] == 50
    assert all(t.text.endswith(".") for t in texts)
    # elsewhere DCLIP's after_text stays '' (the default, and no other preset sets it)
    assert TextsConfig().dclip_after_text == ""
    assert [n for n in preset_names() if "dclip_after_text" in load_preset(n)["config"].get("texts", {})] == [
        "imagenet"
    ]
    pets = json.loads((DESCRIPTORS / "descriptors_pets.json").read_text(encoding="utf-8"))
    names = list(pets)[:3]
    plain, _ = imported_texts(names, pets, "dclip", "import:dclip:descriptors_pets.json")
    assert [t.text for t in plain] == [
        f"{k}, {_dclip_loader_sentence(' '.join(d.split()))}" for k in names for d in pets[k]
    ]


def test_a_changed_text_rule_is_a_new_bank():
    """Bank ids hash the rows' text, so banks built under the old and the new rule are never mixed up."""
    data = {"tench": ["a freshwater fish"]}
    old, _ = imported_texts(["tench"], data, "dclip", "import:dclip")
    new, _ = imported_texts(["tench"], data, "dclip", "import:dclip", ".")
    assert [t.text for t in new] == ["tench, which is a freshwater fish."]
    assert build_bank(old, ["tench"])["textbank_id"][0] != build_bank(new, ["tench"])["textbank_id"][0]
    short = build_bank(template_texts(["tench"], DEFAULT_TEMPLATES[:18]), ["tench"])
    full = build_bank(template_texts(["tench"], DEFAULT_TEMPLATES), ["tench"])
    assert short["textbank_id"][0] != full["textbank_id"][0]
