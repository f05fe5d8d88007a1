"""Bad configuration is refused before any work starts: one line naming the key, and no file in the work directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli


def _files(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.rglob("*") if p.is_file()) if workdir.exists() else []


def _refused(args: list[str], workdir: Path, *needles: str) -> str:
    result = run_cli([*args, "--workdir", str(workdir)])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]  # Prefect's own task-failure log may precede it
    assert last.startswith("error: "), result.output
    for needle in needles:
        assert needle in last, last
    assert _files(workdir) == []
    return last


@pytest.mark.parametrize(
    ("yaml", "needles"),
    [
        ("dataset:\n  nmae: x\n", ["dataset.nmae: unknown key"]),
        ("modle:\n  name: ViT-B-32\n", ["modle: unknown key"]),
        ("texts:\n  llm:\n    api_key: sk-x\n", ["texts.llm.api_key: unknown key"]),
        ("model:\n  batch_size: many\n", ["model.batch_size"]),
        ("dataset:\n  samples_per_shard: 0\n", ["dataset.samples_per_shard"]),
        ("max_failure_rate: 2\n", ["max_failure_rate"]),
        ("dataset:\n  kind: folder\n", ["dataset.kind='folder' needs dataset.source"]),
        ("- just\n- a list\n", ["must hold a mapping"]),
    ],
)
@pytest.mark.parametrize("command", ["run", "ingest", "embed", "texts", "classify"])
def test_bad_config_file_is_refused_before_work(tmp_path: Path, command: str, yaml: str, needles: list[str]):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml)
    args = [command, "--config", str(config)]
    _refused(args, tmp_path / "w", *needles)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--model.batch-size", "0"], ["model.batch_size"]),
        (["--kind", "nope"], ["dataset.kind"]),
        (["--split", " "], ["dataset.split"]),
    ],
)
def test_bad_flags_are_refused_before_work(tmp_path: Path, flags: list[str], needles: list[str]):
    _refused(["run", *flags], tmp_path / "w", *needles)


def test_missing_config_file(tmp_path: Path):
    _refused(["run", "-c", str(tmp_path / "nope.yaml")], tmp_path / "w", "nope.yaml", "not found")


@pytest.mark.flow
@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--source", "/no/such/folder", "--kind", "folder"], ["dataset.source", "/no/such/folder", "not found"]),
        (["--source", "/no/such/root", "--kind", "wds"], ["dataset.source", "/no/such/root", "not found"]),
        (["--source", "/no/such/root"], ["dataset.source", "/no/such/root'", "not found", "image folder"]),
    ],
)
def test_missing_dataset_path_is_refused_before_work(prefect_server, tmp_path: Path, flags, needles):
    for command in ("run", "ingest"):
        _refused([command, *flags], tmp_path / command, *needles)


@pytest.mark.flow
def test_missing_classnames_file_is_refused_before_work(prefect_server, tmp_path: Path, image_folder: Path):
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset:\n  source: {image_folder}\n  kind: folder\n  classnames_file: {tmp_path}/none.txt\n")
    _refused(["ingest", "--config", str(config)], tmp_path / "w", "dataset.classnames_file", "none.txt", "not found")


@pytest.mark.parametrize(
    ("yaml", "needles"),
    [
        ("dataset:\n  name: [pets\n", ["is not valid YAML at line 3, column 1", "fix the syntax"]),
        ("dataset:\n  name: pets\n   split: val\n", ["is not valid YAML at line 3, column 9"]),
        ("\tdataset: {}\n", ["is not valid YAML at line 1, column 1"]),
        ("dataset: !!python/object:os.system {}\n", ["line 1, column 10", "python/object", "remove the tag"]),
        ("model: !!python/object/apply:os.system ['true']\n", ["python/object/apply", "remove the tag"]),
    ],
)
@pytest.mark.parametrize("command", ["run", "ingest", "config"])
def test_malformed_yaml_is_one_line(tmp_path: Path, command: str, yaml: str, needles: list[str]):
    """A syntax error, or a tag that safe_load never builds, names the file and the place: no traceback."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml)
    _refused([command, "-c", str(config)], tmp_path / "w", str(config), *needles)


def _long_path(tmp_path: Path, kind: str) -> Path:
    if kind == "one long name":
        return tmp_path / ("w" * 6000)
    return tmp_path.joinpath(*["abcde"] * 1000)  # 6,000 characters in short names


@pytest.mark.parametrize("command", [["run"], ["ingest"], ["embed"], ["runs"], ["query", "SELECT 1"]])
def test_a_workdir_that_is_a_file_or_too_long_is_one_line(tmp_path: Path, command: list[str]):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder\n")
    cases = {
        afile: "is a file, not a folder",
        afile / "w": f"is inside {afile}, which is a file",
        _long_path(tmp_path, "one long name"): "is too long",
        _long_path(tmp_path, "short names"): "is too long",
    }
    for workdir, needle in cases.items():
        result = run_cli([*command, "--workdir", str(workdir)])
        assert result.exit_code == 2, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("error: work directory ") and needle in last and "--workdir" in last, last
        assert len(last) < 400, last  # a 6,000-character path is shortened in the message
    assert afile.read_text() == "not a folder\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# --- mistakes that used to surface after work (the dataset re-split by then): one line, exit 2, before any work ---


@pytest.fixture
def small_class_folder(tmp_path: Path) -> Path:
    """An image folder whose class 'blue_sky' has 2 images (the others 6): too small for a 3-way split or 2 shots."""
    from conftest import png_bytes

    root = tmp_path / "small"
    for name, n in [("red_apple", 6), ("green_leaf", 6), ("blue_sky", 2)]:
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(png_bytes((i * 30, 90, 30)))
    return root


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["ingest", "--split-ratio", "0.5,0.5,0.5"], ["sum to 1.5, not 1", "give shares that sum to 1"]),
        (["fewshot", "--shots", "0"], ["fewshot.shots", "give K >= 1"]),
    ],
)
def test_split_ratio_not_summing_to_one_and_zero_shots_are_refused(
    tmp_path: Path, small_class_folder: Path, flags: list[str], needles: list[str]
):
    _refused([*flags, "--source", str(small_class_folder)], tmp_path / "w", *needles)


def test_split_ratio_on_a_clip_benchmark_root_is_refused(tmp_path: Path, clip_benchmark_dir: Path):
    args = ["ingest", "--source", str(clip_benchmark_dir), "--split-ratio", "0.5,0.2,0.3"]
    _refused(args, tmp_path / "w", "--split-ratio splits an image folder", "'wds'", "drop --split-ratio")


@pytest.mark.flow
@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["ingest", "--split", "val"], ["'blue_sky' (0)", "split 'val'", "larger share"]),
        (["fewshot", "--shots", "2,4", "--seeds", "1"], ["'blue_sky' (1)", "fewer than 2", "lower --shots 2"]),
    ],
)
def test_a_class_too_small_for_the_ratio_or_the_shots_is_named(
    prefect_server, tmp_path: Path, small_class_folder: Path, flags: list[str], needles: list[str]
):
    args = [*flags, "--source", str(small_class_folder), "--split-ratio", "0.5,0.2,0.3"]
    last = _refused(args, tmp_path / "w", *needles)
    assert "red_apple" not in last and "[1]" not in last  # the class by its name, only the one too small


def test_pretrained_weights_not_cached_and_offline_are_refused_at_once(tmp_path: Path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache: the weights must be downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache ~/.cache/clip, empty too
    start = time.monotonic()
    args = ["run", "--model.name", "ViT-B-32", "--pretrained", "openai"]
    result = run_cli([*args, "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert "--pretrained 'openai'" in last and "not in the cache" in last and "HF_HUB_OFFLINE" in last, last
    assert "checkpoint file" in last and len(result.output.strip().splitlines()) == 1, result.output
    assert time.monotonic() - start < 10


@pytest.mark.flow
def test_a_lock_wait_that_times_out_is_one_line(prefect_server, tmp_path: Path):
    import threading

    from coderflow.storage.lock import ENV_TIMEOUT, workdir_lock

    workdir = tmp_path / "w"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with workdir_lock(workdir, "another run"):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        result = run_cli(["ingest", "--workdir", str(workdir)], env={ENV_TIMEOUT: "1"})
    finally:
        release.set()
        holder.join(30)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: work directory") and "still in use by" in last and ENV_TIMEOUT in last, last
    assert "Traceback" not in result.output, result.output


def test_a_support_split_that_is_also_scored_is_refused(tmp_path: Path):
    _refused(["fewshot", "--fewshot.val-split", "train"], tmp_path / "w", "fewshot.train_split 'train' is also")


def test_searching_on_test_is_said_in_the_report():
    """`--fewshot.val-split test` is the reference's ImageNet protocol: allowed, and the report's settings say so."""
    from coderflow.config import FewShotConfig
    from coderflow.tasks.report.document import _fewshot_settings

    fs = FewShotConfig(val_split="test")
    assert fs.searches_on_test and not FewShotConfig().searches_on_test
    rows = {r["setting"]: r["value"] for r in _fewshot_settings({"fewshot": fs.model_dump()})}
    assert rows["search"] == "grid on the test split (the reference's ImageNet protocol)"
    assert rows["splits (support / val / test)"] == "train / test / test"
    plain = {r["setting"]: r["value"] for r in _fewshot_settings({"fewshot": FewShotConfig().model_dump()})}
    assert plain["search"] == "grid"


def test_bare_split_shares_name_each_split_once(tmp_path: Path):
    """With val the test split, two bare shares are train and test; three are refused with a two-share example."""
    from coderflow.config import PipelineConfig

    layer = {"dataset": {"kind": "folder", "source": str(tmp_path)}, "fewshot": {"val_split": "test"}}
    cfg = PipelineConfig(**{**layer, "dataset": {**layer["dataset"], "split_ratio": "0.6,0.4"}})
    assert cfg.dataset.split_ratio == {"train": 0.6, "test": 0.4}
    with pytest.raises(ValueError, match=r"give train,test as e\.g\. 0\.6,0\.4"):
        PipelineConfig(**{**layer, "dataset": {**layer["dataset"], "split_ratio": "0.5,0.2,0.3"}})
