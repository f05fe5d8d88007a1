"""The up-to-date check: an unchanged `coderflow run` reuses the newest run; changed inputs or --force run again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli

from coderflow.config import PipelineConfig
from coderflow.flows.uptodate import INPUTS_KEY, MANIFEST, check_inputs, inputs_fingerprint
from coderflow.storage.layout import Layout

pytestmark = pytest.mark.flow
ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "torchvision", "webdataset", "prefect", "openai")


def _completed_runs(workdir: Path) -> dict[str, dict]:
    """Manifests of the completed runs, by run id."""
    out = {}
    for path in (workdir / "runs").glob(f"*/{MANIFEST}"):
        manifest = json.loads(path.read_text())
        if manifest["status"] == "completed":
            out[manifest["run_id"]] = manifest
    return out


def _newest(runs: dict[str, dict]) -> str:
    recorded = [m for m in runs.values() if INPUTS_KEY in m]
    return max(recorded, key=lambda m: m["finished_at"])["run_id"]


def _write_config(cfg: PipelineConfig, path: Path, **changes: dict) -> Path:
    data = cfg.model_dump(mode="json", exclude={"workdir"})
    for section, values in changes.items():
        data[section] = {**data[section], **values}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def work(demo_run, tmp_path: Path) -> dict:
    """A copy of the session's demo work directory (mtimes kept, stale DuckDB views included) and its config."""
    workdir = tmp_path / "work"
    shutil.copytree(demo_run["workdir"], workdir)  # copy2: sizes and mtime_ns stay as the runs recorded them
    cfg = demo_run["config"].model_copy(update={"workdir": str(workdir)})
    return {"workdir": workdir, "config": cfg, "yaml": _write_config(cfg, tmp_path / "run.yaml")}


def test_pipeline_records_its_inputs(work):
    runs = _completed_runs(work["workdir"])
    newest = runs[_newest(runs)]
    assert newest[INPUTS_KEY] == inputs_fingerprint(work["config"])  # recorded by the flow, recomputed here
    assert set(newest[INPUTS_KEY]["parts"]) >= {"config", "code", "shards", "image_embeddings", "textbank", "coder"}


def test_unchanged_rerun_is_up_to_date_then_changes_and_force_run_again(work):
    workdir, cfg = work["workdir"], work["config"]
    before = _completed_runs(workdir)
    newest = _newest(before)
    args = ["--workdir", str(workdir)]

    out = run_cli(["run", "-c", str(work["yaml"]), *args])
    assert out.exit_code == 0, out.output
    assert f"up to date: run {newest} (" in out.output and "--force to run again" in out.output
    assert "waffle" in out.output and "top1" in out.output  # the stored metrics table of that run
    assert _completed_runs(workdir).keys() == before.keys()  # nothing ran, no run was written

    # a touched shard file is a changed input; putting its mtime back makes the work dir up to date again
    shard = sorted(Layout.at(workdir).shard_dir("demo", "test").glob("*.tar"))[0]
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    verdict = check_inputs(cfg)
    assert not verdict.up_to_date and verdict.run_id == newest and verdict.changed == ("shards",)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check_inputs(cfg).up_to_date

    # a different classify value runs the pipeline (everything cached but classify) and records the new inputs
    changed = _write_config(cfg, work["yaml"].with_name("changed.yaml"), classify={"rerank_k": 3})
    out = run_cli(["run", "-c", str(changed), *args])
    assert out.exit_code == 0, out.output
    assert "up to date" not in out.output and f"inputs changed since run {newest} (config)" in out.output
    after = _completed_runs(workdir)
    (new,) = after.keys() - before.keys()
    assert after[new]["config"]["classify"]["rerank_k"] == 3 and INPUTS_KEY in after[new]

    out = run_cli(["run", "-c", str(changed), *args])
    assert out.exit_code == 0, out.output
    assert f"up to date: run {new} (" in out.output
    assert _completed_runs(workdir).keys() == after.keys()

    out = run_cli(["run", "-c", str(changed), *args, "--force"])
    assert out.exit_code == 0, out.output
    assert "up to date" not in out.output
    forced = _completed_runs(workdir)
    (again,) = forced.keys() - after.keys()
    # a forced re-run over unchanged files records the same inputs, so the next plain re-run is up to date with it
    assert forced[again][INPUTS_KEY] == after[new][INPUTS_KEY]
    verdict = check_inputs(cfg.model_copy(update={"classify": cfg.classify.model_copy(update={"rerank_k": 3})}))
    assert verdict.up_to_date and verdict.run_id == again


def test_another_model_or_missing_results_are_not_up_to_date(work):
    cfg = work["config"]
    assert check_inputs(cfg).up_to_date
    other = check_inputs(cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "RN50"})}))
    assert not other.up_to_date and other.run_id is None  # no run of that model to compare with
    newest = _newest(_completed_runs(work["workdir"]))
    (work["workdir"] / "runs" / newest / "metrics.parquet").unlink()
    verdict = check_inputs(cfg)
    assert not verdict.up_to_date and verdict.changed == ("results of that run are missing",)


IMPORT_CHECK = """
import sys
from coderflow.cli import main
try:
    main(sys.argv[1:])
finally:
    print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["help", "up-to-date"])
def test_help_and_up_to_date_rerun_import_no_torch_nor_prefect(work, command):
    args = ["--help"] if command == "help" else ["run", "-c", str(work["yaml"]), "--workdir", str(work["workdir"])]
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK.format(heavy=HEAVY), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]
    if command == "up-to-date":
        assert "up to date: run " in done.stdout
    else:
        assert "--force" not in done.stdout and "demo" in done.stdout


def test_ingesting_other_splits_keeps_the_run_up_to_date(work):
    """A few-shot run ingests train/val of the same dataset: the class files stay as they are (same content), so the
    next `coderflow demo` / `run` is still up to date."""
    cfg = work["config"]
    names = Layout.at(work["workdir"]).classnames_file(cfg.dataset.name)
    stamp = names.stat().st_mtime_ns
    out = run_cli(
        ["ingest", "--workdir", str(work["workdir"]), "--kind", "demo", "--dataset.name", "demo", "--split", "val"]
    )
    assert out.exit_code == 0, out.output
    assert names.stat().st_mtime_ns == stamp
    assert check_inputs(cfg).up_to_date


def test_a_changed_source_is_a_changed_input(work):
    cfg = work["config"]
    more = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"demo_image_size": 48})})
    verdict = check_inputs(more)
    assert not verdict.up_to_date and {"config", "source"} <= set(verdict.changed)
    reingest = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"reingest": True})})
    assert check_inputs(reingest).up_to_date  # an action, not a setting: not part of the fingerprint


def test_another_dataset_in_the_work_directory_keeps_a_run_up_to_date(work, clip_benchmark_dir, tmp_path):
    """Run A (demo), run B (a CLIP_benchmark root) in the same work directory, then A again: A is up to date."""
    workdir = work["workdir"]
    args = ["--workdir", str(workdir)]
    first = _newest(_completed_runs(workdir))
    other = _write_config(
        work["config"], tmp_path / "cb.yaml", dataset={"name": "cb", "kind": "wds", "source": str(clip_benchmark_dir)}
    )
    out = run_cli(["run", "-c", str(other), *args])
    assert out.exit_code == 0, out.output
    assert "up to date" not in out.output and "inputs changed" not in out.output  # nothing of dataset cb to compare
    before = _completed_runs(workdir)
    assert _newest(before) != first

    out = run_cli(["run", "-c", str(work["yaml"]), *args])
    assert out.exit_code == 0, out.output
    assert f"up to date: run {first} (" in out.output
    out = run_cli(["run", "-c", str(other), *args])
    assert out.exit_code == 0, out.output
    assert f"up to date: run {_newest(before)} (" in out.output
    assert _completed_runs(workdir).keys() == before.keys()  # no duplicate run of either
