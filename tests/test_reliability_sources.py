"""Reliability with bad dataset definitions: class lists, class and template files, split class folders, nshards.txt.

Decisions this file pins down:
- A class list with an empty name (a blank line inside classnames.txt) or a duplicated name is refused before any
  shard is written, with a one-line error naming the file and the line.
- Class and template files are read on '\n' only (CRLF too), without a UTF-8 BOM, NFC-normalised: a line holding
  another line separator or a control character is refused (file and line), and so are names equal after NFC.
- A `{split}` folder source whose splits have different class folders is refused before ingest: one class list.
- nshards.txt must match the shards that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_runner import run_cli
from conftest import good_png, write_tar

from coderflow.tasks.ingest.sources import folder_source, wds_shard_urls, wds_source


# class lists ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\n\ndog\n", "class 1 has an empty name (line 2)"),
        ("cat\ndog\ncat\n", "'cat' appears twice (lines 1 and 3)"),
        ("\n\n", "the class list is empty"),
    ],
)
def test_bad_class_lists_are_refused(tmp_path: Path, text: str, message: str):
    """A blank line inside a class list would shift every later class index: refused, like duplicates."""
    root = write_tar(tmp_path / "cb" / "test" / "0.tar", [{"__key__": "a", "png": good_png(0), "cls": 0}]).parents[1]
    (root / "classnames.txt").write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        wds_source(str(root), "test")
    names = tmp_path / "names.txt"
    names.write_text(text)
    folder = tmp_path / "folder"
    for c in ("a", "b", "c"):
        (folder / c).mkdir(parents=True)
        (folder / c / "0.png").write_bytes(good_png(0))
    with pytest.raises(ValueError, match=re.escape(message)):
        folder_source(folder, names)


def test_trailing_blank_lines_of_a_class_list_are_fine(tmp_path: Path):
    root = write_tar(tmp_path / "cb" / "test" / "0.tar", [{"__key__": "a", "png": good_png(0), "cls": 0}]).parents[1]
    (root / "classnames.txt").write_text("cat\ndog\n\n\n")
    assert wds_source(str(root), "test").classnames == ["cat", "dog"]


def test_folder_names_that_collide_are_refused(tmp_path: Path):
    """`red_apple` and `red apple` both read as the class 'red apple'."""
    for name in ("red_apple", "red apple"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.png").write_bytes(good_png(0))
    with pytest.raises(ValueError, match="'red apple' appears twice"):
        folder_source(tmp_path)


# class and template files: one reader ----------------------------------------------------------------------
SEPARATORS = ["\u2028", "\u2029", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\t", "\r", "\u202e"]


def _class_sources(tmp_path: Path, names: str) -> tuple[Path, Path, Path]:
    """A CLIP_benchmark root and an image folder (2 classes) with `names` as their class file."""
    root = write_tar(tmp_path / "cb" / "test" / "0.tar", [{"__key__": "a", "png": good_png(0), "cls": 0}]).parents[1]
    (root / "classnames.txt").write_bytes(names.encode())
    folder = tmp_path / "folder"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        (folder / c / "0.png").write_bytes(good_png(0))
    (tmp_path / "names.txt").write_bytes(names.encode())
    return root, folder, tmp_path / "names.txt"


@pytest.mark.parametrize("sep", SEPARATORS)
def test_a_class_line_with_another_line_separator_is_refused(tmp_path: Path, sep: str):
    """`str.splitlines` would make two classes of 'big<sep>cat': refused, naming the file and line."""
    root, folder, names = _class_sources(tmp_path, f"dog\nbig{sep}cat\n")
    message = f"line 2: {'big' + sep + 'cat'!r} holds the character U+{ord(sep):04X}"
    with pytest.raises(ValueError, match=re.escape(f"{root / 'classnames.txt'} {message}")):
        wds_source(str(root), "test")
    with pytest.raises(ValueError, match=re.escape(f"{names} {message}")):
        folder_source(folder, names)
    (root / "classnames.txt").write_text("dog\ncat\n")
    (root / "zeroshot_classification_templates.txt").write_bytes(f"a photo of a {{c}}.\na{sep}{{c}}\n".encode())
    with pytest.raises(ValueError, match=re.escape("zeroshot_classification_templates.txt line 2")):
        wds_source(str(root), "test")


def test_class_files_lose_a_bom_and_crlf_and_are_nfc(tmp_path: Path):
    root, folder, names = _class_sources(tmp_path, "\ufeffcafe\u0301\r\ndog\r\n")
    assert wds_source(str(root), "test").classnames == ["caf\u00e9", "dog"]
    assert folder_source(folder, names).classnames == ["caf\u00e9", "dog"]
    (root / "zeroshot_classification_templates.txt").write_bytes("\ufeffa photo of a {c}.\r\n\r\n".encode())
    assert wds_source(str(root), "test").templates == ["a photo of a {c}."]


def test_class_names_equal_after_nfc_are_one_name_twice(tmp_path: Path):
    root, folder, names = _class_sources(tmp_path, "caf\u00e9\ncafe\u0301\n")
    with pytest.raises(ValueError, match="'caf\u00e9' appears twice \\(lines 1 and 2\\)"):
        wds_source(str(root), "test")
    with pytest.raises(ValueError, match="appears twice"):
        folder_source(folder, names)


def test_a_bad_class_file_stops_ingest_in_one_line(tmp_path: Path):
    root, _, _ = _class_sources(tmp_path, "dog\u2028cat\nbird\n")
    workdir = tmp_path / "w"
    result = run_cli(["ingest", "--workdir", workdir, "--dataset.name", "cb", "--source", root, "--kind", "wds"])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{root / 'classnames.txt'} line 1" in last and "U+2028" in last, last
    assert not workdir.exists()


# splits of one dataset share one class list ---------------------------------------------------------------
def test_fewshot_on_splits_with_other_class_folders_is_refused_before_ingest(tmp_path: Path):
    """train has an extra class, val lacks one: each split's labels would index another list than classnames.txt."""
    folders = {"train": ("cat", "dog", "emu", "zebra"), "val": ("cat", "emu"), "test": ("cat", "dog", "emu")}
    for split, classes in folders.items():
        for ci, name in enumerate(classes):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            (tmp_path / "pets" / split / name / "0.png").write_bytes(good_png(ci))
    workdir = tmp_path / "w"
    source = str(tmp_path / "pets" / "{split}")
    result = run_cli(["fewshot", "--workdir", workdir, "--source", source, "--kind", "folder", "--shots", "1"])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "different class folders" in last, last
    assert "val lacks 'dog', 'zebra'" in last and "test lacks 'zebra'" in last and "train lacks" not in last, last
    assert "same class folders" in last, last
    assert not workdir.exists()


# nshards.txt -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("count", "message"),
    [
        ("50000000", "says 50,000,000 shards, but"),
        ("3", "says 3 shards, but"),
        ("lots", "holds 'lots', not a number of shards"),
    ],
)
def test_an_nshards_count_that_does_not_match_the_shards_is_refused(tmp_path: Path, count: str, message: str):
    from conftest import write_clip_benchmark

    root = write_clip_benchmark(tmp_path / "cb")  # 2 shards
    (root / "test" / "nshards.txt").write_text(count + "\n")
    workdir = tmp_path / "w"
    result = run_cli(["ingest", "--workdir", workdir, "--dataset.name", "cb", "--source", root, "--kind", "wds"])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(root / "test" / "nshards.txt") in last and message in last, last
    assert not workdir.exists()


def test_a_matching_nshards_count_is_used(tmp_path: Path):
    from conftest import write_clip_benchmark

    root = write_clip_benchmark(tmp_path / "cb", n_shards=3)
    assert [Path(u).name for u in wds_shard_urls(str(root), "test")] == ["0.tar", "1.tar", "2.tar"]
