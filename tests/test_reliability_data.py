"""Reliability with damaged input data: undecodable images and damaged shards, bad labels, duplicate keys.

Decisions this file pins down:
- An image that cannot be decoded (corrupt, zero bytes) is a row with status 'error' and the decoder's message in
  image_embeddings.error; odd but valid modes (CMYK, 16-bit, palette with transparency) are converted and embedded.
- A damaged shard (zero bytes, truncated mid-member, not a tar, empty) never stops the stage: the samples before the
  damage are kept and one row keyed `<shard>#shard` with status 'error' says what happened.
- A sample without a label is embedded and predicted (status 'ok', label NULL) and left out of the metrics.
- A label outside [0, n_classes) or not an integer is a row with status 'error' ("label 12 out of range for 2
  classes"): it is counted and visible in SQL, and classification and metrics never see it.
- Duplicate sample keys (two source shards both holding `s0000000`) are re-keyed at ingest: the first keeps its key,
  a later one becomes `<key>_dup1`, with a warning and a count in the ingest marker; nothing is dropped.
- A bad class list stops ingest before any shard is written (the class-list rules: test_reliability_sources.py).
- A damaged ingest marker is named, and re-ingesting rebuilds it.
- An image over model.max_image_bytes or model.max_image_pixels (read from its header) is an error row, not decoded.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from conftest import good_png, write_tar
from PIL import Image

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.storage.shards import SHARD_ERROR, ingest_info, iter_samples, list_shards, write_split
from coderflow.tasks.ingest.checks import check_samples
from coderflow.tasks.ingest.sources import wds_source


# images and shards ----------------------------------------------------------------------------------------
def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def cmyk() -> bytes:
    return _png(Image.new("CMYK", (16, 16), (0, 50, 100, 0)), "JPEG")


def sixteen_bit() -> bytes:
    return _png(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 250))


def palette_transparent() -> bytes:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return _png(img, transparency=0)


def truncate_mid_member(path: Path, member_index: int) -> None:
    """Cut a tar inside the data of its `member_index`-th member."""
    with tarfile.open(path) as t:
        member = t.getmembers()[member_index]
    data = path.read_bytes()
    path.write_bytes(data[: member.offset_data + member.size // 2])


def bad_source(root: Path) -> Path:
    """A CLIP_benchmark-layout dataset (2 classes) holding every kind of bad input, in five shards."""
    test = root / "test"
    write_tar(
        test / "0.tar",
        [
            {"__key__": "s0000000", "png": good_png(0), "cls": 0},
            {"__key__": "corrupt", "jpg": b"\xff\xd8\xff not really a jpeg", "cls": 1},
            {"__key__": "zerobyte", "png": b"", "cls": 0},
            {"__key__": "cmyk", "jpg": cmyk(), "cls": 1},
            {"__key__": "sixteen", "png": sixteen_bit(), "cls": 0},
            {"__key__": "palette", "png": palette_transparent(), "cls": 1},
            {"__key__": "nolabel", "png": good_png(6)},
            {"__key__": "label12", "png": good_png(7), "cls": 12},
            {"__key__": "labelcat", "png": good_png(8), "cls": "cat"},
        ],
    )
    # the same key as in 0.tar, plus a good sample
    write_tar(
        test / "1.tar",
        [{"__key__": "s0000000", "png": good_png(9), "cls": 1}, {"__key__": "s1", "png": good_png(10), "cls": 0}],
    )
    two = write_tar(test / "2.tar", [{"__key__": f"t{i}", "png": good_png(20 + i), "cls": i % 2} for i in range(3)])
    truncate_mid_member(two, 3)  # members: t0.cls t0.png t1.cls t1.png ... -> cut inside t1.png
    write_tar(test / "3.tar", [])  # a valid, empty tar
    (test / "4.tar").write_bytes(b"")  # zero bytes
    (test / "nshards.txt").write_text("5\n")
    (root / "classnames.txt").write_text("cat\ndog\n")
    return root


# shard reading (pure) -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "keys", "message"),
    [
        ("none", ["a", "b", "c"], None),
        ("truncated", ["a", "b#shard"], "truncated or unreadable after member 'b.cls'"),
        ("zero-byte", ["b#shard"], "at its start (ReadError: empty file)"),
        ("not-a-tar", ["b#shard"], "ReadError"),
        ("empty", ["b#shard"], "holds no samples (empty tar)"),
        ("missing", ["b#shard"], "cannot be opened (FileNotFoundError"),
    ],
)
def test_iter_samples_survives_damaged_shards(tmp_path: Path, damage: str, keys: list[str], message: str | None):
    """A damaged shard yields its complete samples, then one `<shard>#shard` error sample; it never raises."""
    shard = write_tar(
        tmp_path / "b.tar", [{"__key__": k, "png": good_png(i) * 4, "cls": 0} for i, k in enumerate("abc")]
    )
    if damage == "truncated":
        truncate_mid_member(shard, 3)  # inside b.png
    elif damage == "zero-byte":
        shard.write_bytes(b"")
    elif damage == "not-a-tar":
        shard.write_bytes(b"hello " * 200)
    elif damage == "empty":
        write_tar(shard, [])
    elif damage == "missing":
        shard.unlink()
    got = list(iter_samples(shard))
    assert [s["__key__"] for s in got] == keys
    errors = [s[SHARD_ERROR] for s in got if SHARD_ERROR in s]
    if message is None:
        assert errors == [] and got[0]["png"] == good_png(0) * 4
    else:
        assert len(errors) == 1 and message in errors[0] and str(shard) in errors[0]


def test_samples_never_merge_across_source_shards(tmp_path: Path):
    """The last sample of one source shard and the first of the next share a key: two samples, not one."""
    root = tmp_path / "cb"
    write_tar(root / "test" / "0.tar", [{"__key__": "x", "png": good_png(1), "cls": 0}])
    write_tar(root / "test" / "1.tar", [{"__key__": "x", "png": good_png(2), "cls": 1}])
    (root / "classnames.txt").write_text("a\nb\n")
    report: dict = {}
    got = list(check_samples(wds_source(str(root), "test").samples, 2, report))
    assert [(s["__key__"], s["png"]) for s in got] == [("x", good_png(1)), ("x_dup1", good_png(2))]
    assert report["duplicate_keys"] == 1


def test_check_samples_counts_and_rekeys():
    warnings: list[str] = []
    samples = [
        {"__key__": "k", "png": b"1", "cls": 0},
        {"__key__": "k", "png": b"2", "cls": 5, "__url__": "src/1.tar"},
        {"__key__": "k_dup1", "png": b"3", "cls": 0},  # the re-keyed name is taken: the next duplicate skips it
        {"__key__": "k", "png": b"4"},
        {"__key__": "3#shard", SHARD_ERROR: "shard 3.tar holds no samples (empty tar)"},
    ]
    report: dict = {}
    out = list(check_samples(iter(samples), 2, report, warn=warnings.append))
    assert [s["__key__"] for s in out] == ["k", "k_dup1", "k_dup1_dup1", "k_dup2", "3#shard"]
    assert report == {
        "duplicate_keys": 3,
        "bad_labels": 1,
        "shard_errors": ["shard 3.tar holds no samples (empty tar)"],
    }
    assert any("'k' (source shard src/1.tar) was seen before: stored as k_dup1" in w for w in warnings)
    assert any("label 5 out of range for 2 classes" in w for w in warnings)
    assert all("__url__" not in s for s in out)


@pytest.mark.flow
def test_bad_class_list_stops_ingest_before_any_shard(prefect_server, tmp_path: Path):
    root = bad_source(tmp_path / "cb")
    (root / "classnames.txt").write_text("cat\n\ndog\n")
    workdir = tmp_path / "w"
    args = ["ingest", "--workdir", str(workdir), "--dataset.name", "bad", "--source", str(root), "--kind", "wds"]
    result = run_cli(args)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]  # Prefect's own task-failure log may precede it
    assert last.startswith("error: ") and "classnames.txt: class 1 has an empty name (line 2)" in last
    assert not list(workdir.rglob("*.tar"))


# the whole thing, through the CLI and SQL -----------------------------------------------------------------
@pytest.mark.flow
def test_bad_inputs_end_to_end_are_rows_with_status(prefect_server, tmp_path: Path):
    """Every bad input becomes a row with status/error in image_embeddings; the run completes and classifies."""
    root = bad_source(tmp_path / "cb")
    workdir = tmp_path / "w"
    config = tmp_path / "run.yaml"
    config.write_text("dataset:\n  name: bad\n  samples_per_shard: 4\nmax_failure_rate: 0.9\n")
    base = ["--config", str(config), "--workdir", str(workdir)]
    out = run_cli(["ingest", *base, "--source", str(root), "--kind", "wds"])
    assert out.exit_code == 0, out.output
    marker = ingest_info(Layout.at(workdir).shard_dir("bad", "test"))
    problems = marker["problems"]
    assert problems["duplicate_keys"] == 1 and problems["bad_labels"] == 2
    assert len(problems["shard_errors"]) == 3
    for stage in (["embed", *base], ["texts", *base, "--texts.types", "name"]):
        out = run_cli(stage)
        assert out.exit_code == 0, out.output
    out = run_cli(["classify", *base, "--methods", "clip"])
    assert out.exit_code == 0, out.output

    layout = Layout.at(workdir)
    rows = query(layout, "SELECT sample_key, label, status, error FROM image_embeddings ORDER BY sample_key")
    by_key = {r["sample_key"]: r for r in rows.to_pylist()}
    ok = {"s0000000", "s0000000_dup1", "s1", "cmyk", "sixteen", "palette", "nolabel", "t0"}
    assert {k for k, r in by_key.items() if r["status"] == "ok"} == ok
    assert by_key["nolabel"]["label"] is None
    assert "UnidentifiedImageError" in by_key["corrupt"]["error"]
    assert "UnidentifiedImageError" in by_key["zerobyte"]["error"]
    assert by_key["label12"]["error"] == "label 12 out of range for 2 classes"
    assert by_key["labelcat"]["error"] == "label 'cat' is not an integer class index"
    assert "truncated or unreadable after member 't1.cls'" in by_key["2#shard"]["error"]
    assert "holds no samples (empty tar)" in by_key["3#shard"]["error"]
    assert "at its start (ReadError: empty file)" in by_key["4#shard"]["error"]
    assert len(by_key) == 15
    assert query(
        layout, "SELECT count(*) = count(DISTINCT sample_key) AS unique FROM image_embeddings"
    ).to_pylist() == [{"unique": True}]
    # only ok rows are classified; the unlabelled one is predicted but not scored
    preds = query(layout, "SELECT count(*) AS n, count(label) AS labelled FROM predictions").to_pylist()
    assert preds == [{"n": len(ok), "labelled": len(ok) - 1}]
    n = query(layout, "SELECT value FROM metrics WHERE metric = 'n_samples' AND method = 'clip'").to_pylist()
    assert n == [{"value": len(ok) - 1}]


def test_embed_rows_for_labels_and_shard_errors(tmp_path: Path):
    """The pure embedding step: label checks against n_classes, shard-error samples, no-label samples."""
    from coderflow.tasks.embed.encode import embed_samples
    from coderflow.tasks.embed.model import load_model

    lm = load_model("ViT-S-32-alt")
    samples = [
        {"__key__": "a", "png": good_png(1), "cls": b"1"},
        {"__key__": "b", "png": good_png(2), "cls": b"-1"},
        {"__key__": "c", "png": good_png(3), "cls": b"10"},
        {"__key__": "d", "png": good_png(4)},
        {"__key__": "x#shard", SHARD_ERROR: b"shard x.tar holds no samples (empty tar)"},
    ]
    rows = embed_samples(samples, lm, 2, {"dataset": "d", "split": "s", "shard": "x"}, n_classes=10).to_pylist()
    assert [(r["sample_key"], r["status"]) for r in rows] == [
        ("a", "ok"), ("b", "error"), ("c", "error"), ("d", "ok"), ("x#shard", "error"),
    ]  # fmt: skip
    assert rows[1]["error"] == "label -1 out of range for 10 classes"
    assert rows[2]["error"] == "label 10 out of range for 10 classes"
    assert rows[2]["embedding"] is None and rows[2]["label"] == 10  # the stored label is kept for inspection
    assert rows[4]["error"] == "shard x.tar holds no samples (empty tar)"


@pytest.mark.parametrize("n_classes", [10, None])
def test_a_label_beyond_int32_is_a_row_error_not_a_lost_shard(n_classes: int | None):
    from coderflow.tasks.embed.encode import embed_samples
    from coderflow.tasks.embed.model import load_model

    samples = [
        {"__key__": "big", "png": good_png(1), "cls": str(2**31).encode()},
        {"__key__": "huge", "png": good_png(2), "cls": b"-99999999999999999999"},
        {"__key__": "ok", "png": good_png(3), "cls": b"3"},
    ]
    meta = {"dataset": "d", "split": "s", "shard": "x"}
    rows = embed_samples(samples, load_model("ViT-S-32-alt"), 2, meta, n_classes=n_classes).to_pylist()
    assert [(r["sample_key"], r["status"], r["label"]) for r in rows] == [
        ("big", "error", None), ("huge", "error", None), ("ok", "ok", 3),
    ]  # fmt: skip
    assert rows[0]["error"] == f"label {2**31} is too large for a class index"


def test_ingested_split_has_unique_keys(tmp_path: Path):
    """write_split stores what check_samples passes: one tar entry per sample, no key twice."""
    samples = [{"__key__": "k", "png": good_png(i), "cls": 0} for i in range(5)]
    report: dict = {}
    shards = write_split(check_samples(iter(samples), 1, report), tmp_path / "s", "p-%06d.tar", 2, {})
    keys = [s["__key__"] for sh in list_shards(tmp_path / "s") for s in iter_samples(sh)]
    assert len(shards) == 3 and keys == ["k", "k_dup1", "k_dup2", "k_dup3", "k_dup4"]


# damaged ingest files ----------------------------------------------------------------------------------------
@pytest.mark.flow
def test_a_damaged_ingest_marker_is_named_and_reingest_rebuilds_it(prefect_server, tmp_path: Path):
    workdir = tmp_path / "w"
    base = ["--workdir", workdir, "--dataset.demo-images-per-class", "2"]
    assert run_cli(["ingest", *base]).exit_code == 0
    shard_dir = Layout.at(workdir).shard_dir("demo", "test")
    marker = shard_dir / "_ingest.json"
    marker.write_text(marker.read_text()[:60])  # cut mid-value, as a crash of the disk would
    for command in (["embed", *base], ["texts", *base], ["classify", *base]):
        out = run_cli(command)
        last = out.output.strip().splitlines()[-1]
        assert out.exit_code == 2 and last.startswith("error: "), out.output
        assert f"ingest marker {marker} is damaged (" in last and "--reingest rebuilds it" in last, last
    (shard_dir / "_source.json").write_text("{")
    out = run_cli(["ingest", *base])  # no --reingest needed: a damaged marker is a split not ingested
    assert out.exit_code == 0, out.output
    assert ingest_info(shard_dir)["samples"] == 20
    assert run_cli(["ingest", *base]).output.strip().endswith("(up to date)")


@pytest.mark.parametrize("damaged", ["_ingest.json", "_source.json"])
def test_a_damaged_ingest_file_means_ingest_again_with_a_warning(tmp_path: Path, damaged: str):
    from coderflow.config import DatasetConfig
    from coderflow.tasks.ingest.task import reingest_reason

    cfg = DatasetConfig(demo_images_per_class=1)
    layout = Layout.at(tmp_path)
    shard_dir = layout.shard_dir("demo", "test")
    write_split(
        iter([{"__key__": "a", "png": good_png(0), "cls": 0}]), shard_dir, "d-%06d.tar", 5, {}, {"_source.json": "{}"}
    )
    (shard_dir / damaged).write_bytes(b'{\n  "config": {\n    "name": "de')
    warnings: list[str] = []
    assert reingest_reason(cfg, layout, {}, warnings.append) == "a damaged ingest file"
    what = {"_ingest.json": "ingest marker", "_source.json": "source listing"}[damaged]
    assert warnings == [
        f"{what} {shard_dir / damaged} is damaged (Unterminated string starting at: line 3 column 13): "
        "ingesting the split again"
    ]


# images too large to decode ----------------------------------------------------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says width x height (the pixel data stays that of a 16x16 image)."""
    import struct
    import zlib

    data = bytearray(good_png(1))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length, type, 13 bytes of data, crc
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_over_the_size_limits_are_error_rows_never_decoded(monkeypatch):
    from PIL import ImageFile

    from coderflow.tasks.embed.encode import DecodeLimits, embed_samples
    from coderflow.tasks.embed.model import load_model

    assert Image.open(io.BytesIO(_png_claiming(10_000, 9_000))).size == (10_000, 9_000)
    real_load = ImageFile.ImageFile.load

    def load(self):  # a decode of the 90-megapixel image would take 270 MB here (12 GB for a real big one)
        assert self.size[0] * self.size[1] <= 1_000_000, f"decoded a {self.size} image"
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    noise = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    samples = [
        {"__key__": "huge", "png": _png_claiming(10_000, 9_000), "cls": 0},
        {"__key__": "heavy", "png": noise, "cls": 0},
        {"__key__": "fine", "png": good_png(2), "cls": 0},
    ]
    limits = DecodeLimits(max_bytes=len(noise) - 1)
    meta = {"dataset": "d", "split": "s", "shard": "x"}
    rows = embed_samples(samples, load_model("ViT-S-32-alt"), 2, meta, n_classes=1, limits=limits).to_pylist()
    assert [(r["sample_key"], r["status"]) for r in rows] == [("huge", "error"), ("heavy", "error"), ("fine", "ok")]
    assert "image is 10000x9000 pixels (90.0 MP), over model.max_image_pixels (89.5 MP)" in rows[0]["error"]
    assert "over model.max_image_bytes" in rows[1]["error"] and rows[1]["embedding"] is None


@pytest.mark.flow
def test_image_size_limits_are_settings_of_the_embed_command(prefect_server, tmp_path: Path):
    folder = tmp_path / "photos"
    for ci, name in enumerate(("a", "b")):
        (folder / name).mkdir(parents=True)
        (folder / name / "small.png").write_bytes(good_png(ci))
    (folder / "b" / "wide.png").write_bytes(_png(Image.new("RGB", (2000, 600), (9, 9, 9))))
    base = ["--workdir", tmp_path / "w", "--source", folder, "--kind", "folder"]
    assert run_cli(["ingest", *base]).exit_code == 0
    out = run_cli(["embed", *base, "--model.max-image-pixels", "1000000", "--max-failure-rate", "0.5"])
    assert out.exit_code == 0, out.output
    rows = query(Layout.at(tmp_path / "w"), "SELECT status, error FROM image_embeddings ORDER BY status").to_pylist()
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert "2000x600 pixels (1.2 MP), over model.max_image_pixels (1.0 MP)" in rows[0]["error"]
