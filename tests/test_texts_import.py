"""Published text files as text banks: DCLIP/WaffleCLIP descriptors, CuPL prompts, CLIP_benchmark templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run_cli
from conftest import png_bytes

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.classify.methods import descriptor_sentence
from coderflow.tasks.texts.imports import (
    clip_benchmark_templates,
    export_bank,
    imported_texts,
    match_classes,
    read_json_lists,
)

DESCRIPTORS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "descriptors"
needs_fixtures = pytest.mark.skipif(not DESCRIPTORS.is_dir(), reason="../shared/fixtures/descriptors not present")


def test_descriptor_sentences_as_dclip_writes_them():
    """classify_by_description / WaffleCLIP make_descriptor_sentence: a plain string-prefix rule."""
    assert descriptor_sentence("a long tail") == "which is a long tail"
    assert descriptor_sentence("arched beak") == "which is arched beak"  # the reference's prefix test, kept
    assert descriptor_sentence("often has spots") == "which often has spots"
    assert descriptor_sentence("used for riding") == "which is used for riding"
    assert descriptor_sentence("five petals") == "which has five petals"


def test_classes_match_case_insensitively_ignoring_underscores():
    matched, missing, extra = match_classes(["Pink_Primrose", "rose", "made up"], ["pink primrose", "Rose", "tulip"])
    assert matched == {0: "pink primrose", 1: "Rose"} and missing == ["made up"] and extra == ["tulip"]


def test_dclip_and_cupl_rows_and_export_round_trip():
    data = {"cat": ["whiskers", "a small body"], "dog": ["wagging tail"]}
    texts, report = imported_texts(["cat", "dog", "fox"], data, "dclip", "import:dclip")
    assert [t.text for t in texts] == [
        "cat, which has whiskers",
        "cat, which is a small body",
        "dog, which has wagging tail",
    ]
    assert all(t.text_type == "att" for t in texts) and report["unmatched_classes"] == ["fox"]
    cupl, _ = imported_texts(["cat"], {"cat": ["A photo of a cat, a small furry pet."]}, "cupl", "import:cupl")
    assert [t.text for t in cupl] == ["A photo of a cat, a small furry pet."]
    rows = [{"text_type": t.text_type, "class_index": t.class_index, "class_name": ["cat", "dog"][t.class_index],
             "text": t.text} for t in texts]  # fmt: skip
    assert export_bank(rows, "dclip") == data
    templates = [{"text_type": "template", "class_index": 0, "class_name": "cat", "text": "a photo of a cat."}]
    assert export_bank(templates, "clip-benchmark", "cats") == {"cats": ["a photo of a {c}."]}


def test_clip_benchmark_export_keys_templates_by_dataset(tmp_path):
    """`texts export --format clip-benchmark` writes CLIP_benchmark's layout, {dataset: [templates]}, which
    `texts import --format clip-benchmark --key` reads back."""
    import pyarrow as pa

    from coderflow.storage.parquet_io import write_table
    from coderflow.storage.schemas import TEXTS

    layout = Layout.at(tmp_path / "w")
    rows = [{"text_id": f"t{i}", "textbank_id": "bank1", "text_index": i, "class_index": c, "class_name": name,
             "text_type": "template", "other_class_index": None, "text": t.format(c=name), "source": "template",
             "n_tokens": 8, "truncated": False}
            for i, (c, name, t) in enumerate([(0, "cat", "a photo of a {c}."), (0, "cat", "a sketch of a {c}."),
                                              (1, "dog", "a photo of a {c}.")])]  # fmt: skip
    write_table(pa.Table.from_pylist(rows, TEXTS), layout.textbank_file("bank1"), TEXTS)
    (layout.root / "texts" / "latest-pets.txt").write_text("bank1\n")
    out = tmp_path / "templates.json"
    done = run_cli(["texts", "export", "bank1", "--format", "clip-benchmark", "-o", out, "--workdir", layout.root])
    assert done.exit_code == 0, done.output
    exported = json.loads(out.read_text())
    assert exported == {"pets": ["a photo of a {c}.", "a sketch of a {c}."]}
    assert clip_benchmark_templates(exported, "pets") == exported["pets"]
    done = run_cli(["texts", "export", "bank1", "--format", "clip-benchmark", "-o", out, "--key", "oxford_pets",
                    "--workdir", layout.root])  # fmt: skip
    assert done.exit_code == 0 and list(json.loads(out.read_text())) == ["oxford_pets"]


def test_clip_benchmark_templates_and_bad_files(tmp_path):
    data = {"cifar10": ["a photo of a {c}.", "a blurry photo of a {c}."]}
    assert clip_benchmark_templates(data, "cifar10") == data["cifar10"]
    with pytest.raises(ValueError, match="no templates for 'pets'"):
        clip_benchmark_templates(data, "pets")
    bad = tmp_path / "bad.json"
    bad.write_text('{"cat": "not a list"}')
    with pytest.raises(ValueError, match="expected a JSON object of lists of strings"):
        read_json_lists(bad)


@needs_fixtures
def test_published_descriptor_files_read():
    for path in sorted(DESCRIPTORS.glob("descriptors_*.json")):
        data = read_json_lists(path)
        assert len(data) >= 10 and sum(map(len, data.values())) > 2 * len(data), path.name


@needs_fixtures
@pytest.mark.flow
def test_import_then_score_dclip_on_the_imported_bank(prefect_server, tmp_path):
    """`coderflow texts import` on WaffleCLIP's published flowers descriptors; dclip scores on that bank while the
    run's own bank serves the other methods; the run's config records which bank each method used."""
    data = json.loads((DESCRIPTORS / "descriptors_flowers102.json").read_text())
    classes = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    assert all(c in data for c in classes)
    root = tmp_path / "flowers"
    for ci, name in enumerate([*classes, "made up flower"]):
        (root / name.replace(" ", "_")).mkdir(parents=True)
        for i in range(2):
            (root / name.replace(" ", "_") / f"{i}.png").write_bytes(png_bytes((60 * ci, 30 * i, 90), 24))
    work = ["--workdir", str(tmp_path / "w")]
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"texts": {"types": ["name"]}, "methods": ["clip", "dclip"]}))
    assert run_cli(["run", "-c", str(config), "--source", str(root), *work]).exit_code == 0
    out = run_cli(["texts", "import", str(DESCRIPTORS / "descriptors_flowers102.json"), "--format", "dclip",
              "--dataset.name", "flowers", *work],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "unmatched classes (1): ['made up flower']" in out.output and "unmatched keys (99)" in out.output
    bank = out.output.split("text bank ", 1)[1].split(":", 1)[0]
    layout = Layout.at(tmp_path / "w")
    att = query(layout, f"SELECT class_name, text FROM texts WHERE textbank_id = '{bank}' AND text_type = 'att'")
    rows = att.to_pylist()
    assert len(rows) == sum(len(data[c]) for c in classes)
    assert {"class_name": "pink primrose", "text": "pink primrose, which has five petals in a star shape"} in rows

    scored = run_cli(["classify", "--dataset.name", "flowers", "--classify.banks", f"dclip={bank}", *work])
    assert scored.exit_code == 0, scored.output
    runs = query(layout, "SELECT config, textbank_id FROM runs ORDER BY started_at").to_pylist()
    config_of_last = json.loads(runs[-1]["config"])
    assert config_of_last["classify"]["banks"] == {"dclip": bank} and runs[-1]["textbank_id"] != bank
    refused = run_cli(["classify", "--dataset.name", "flowers", "--classify.banks", "dclip", *work])
    assert refused.exit_code == 2 and "METHOD=BANK_ID" in refused.output

    exported = tmp_path / "out.json"
    assert run_cli(["texts", "export", bank, "--format", "dclip", "-o", str(exported), *work]).exit_code == 0
    assert json.loads(exported.read_text()) == {c: data[c] for c in classes}
