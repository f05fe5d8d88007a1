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
