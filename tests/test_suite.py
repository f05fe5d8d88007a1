"""Suites: the suite file's checks and grid (pure), its deployment on a schedule, and suite runs through the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import Chromium
from cli_runner import run_cli
from conftest import png_bytes, write_tar

from coderflow.config import PipelineConfig
from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.storage.runs import versions
from coderflow.suite_config import SuiteError, SuiteFile, expand, read_suite

DESCRIPTORS = {"cat": ["whiskers", "pointed ears"], "dog": ["a wagging tail"], "red apple": ["a stem"]}


def _folder(root: Path, per_class: int = 3) -> Path:
    """An image folder of the benchmark root's two classes (the same generated bank serves both datasets)."""
    for ci, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png_bytes((70 * ci + 5 * i, 30 * i, 90), 24))
    return root


def _benchmark_root(root: Path, per_class: int = 3) -> Path:
    """A CLIP_benchmark root with train, val and test splits of two classes and two templates (few text embeddings:
    a bank's template texts are the dataset's templates for every class)."""
    for si, split in enumerate(("train", "val", "test")):
        samples = [{"__key__": f"{split}{k:05d}", "png": png_bytes((40 * k % 255, 60 * si, 90), 24), "cls": k % 2}
                   for k in range(2 * per_class)]  # fmt: skip
        write_tar(root / split / "0.tar", samples)
        (root / split / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("cat\ndog\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    return root


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _suite(tmp_path: Path, **suite: Any) -> dict[str, Any]:
    """A small suite over a CLIP_benchmark root and an image folder (made in tmp_path), with an imported descriptor file."""
    (tmp_path / "descriptors.json").write_text(json.dumps(DESCRIPTORS))
    photos, pets = tmp_path / "photos", tmp_path / "pets"
    if not photos.exists():
        _folder(photos), _benchmark_root(pets)
    spec = {
        "name": "tiny",
        "datasets": [
            {"name": "pets", "kind": "wds", "source": str(pets)},
            {"name": "photos", "kind": "folder", "source": str(photos)},
        ],
        "models": [{"name": "ViT-S-32-alt"}],
        "banks": ["offline", {"import": "descriptors.json", "format": "dclip"}],
        "methods": ["clip", "coder", "coder_rerank"],
        "fewshot": {
            "shots": [1, 2],
            "seeds": [1, 2],
            "methods": ["tip_adapter", "coder_adapter"],
            "datasets": ["pets"],
        },
        **suite,
    }
    return {
        "workdir": str(tmp_path / "work"),
        "model": {"batch_size": 16},
        "texts": {"types": ["name", "att"]},
        "templates": ["a photo of a {c}."],  # both datasets: one bank, written once and shared
        "fewshot": {"augment_views": 1, "alphas": [0.5, 1.0], "betas": [1.0, 5.0]},
        "suite": spec,
    }


def test_the_grid_in_run_order_with_every_cells_settings(tmp_path: Path):
    data = _suite(tmp_path, models=[{"name": "ViT-S-32-alt"}, {"name": "RN50", "precision": "bf16"}])
    data["suite"]["banks"].insert(1, {"llm": {"model": "local", "base_url": "http://127.0.0.1:8080/v1"}})
    data["suite"]["datasets"].append({"benchmark": "cifar10"})
    data["classify"] = {"rerank_k": 3}
    file = read_suite(_write(tmp_path / "s.yaml", data), {"model": {"device": "cpu"}})
    cells = expand(file)
    # zero-shot: 3 datasets x 2 models x 3 banks; few-shot: pets only, x 2 models x 2 generated banks (not the import)
    assert len(cells) == 3 * 2 * 3 + 2 * 2
    keys = [(c.dataset, c.model) for c in cells]
    assert keys == sorted(keys, key=lambda k: ([c.dataset for c in cells].index(k[0]), k[1] != "ViT-S-32-alt/random"))
    first = [(c.kind, c.bank) for c in cells[:5]]
    assert first == [("zeroshot", "offline"), ("zeroshot", "llm:local"), ("zeroshot", "import:descriptors.json"),
                     ("fewshot", "offline"), ("fewshot", "llm:local")]  # fmt: skip
    assert {c.model for c in cells} == {"ViT-S-32-alt/random", "RN50/random/bf16"}
    llm = cells[1].config
    assert (
        llm.texts.generator == "llm"
        and llm.texts.llm.model == "local"
        and llm.texts.types == ("name", "template", "att")
    )
    assert cells[0].config.texts.generator == "offline" and cells[0].config.methods == ("clip", "coder", "coder_rerank")
    assert all(c.config.classify.rerank_k == 3 and c.config.workdir == str(tmp_path / "work") for c in cells)
    assert all(c.config.model.batch_size == 16 for c in cells)  # the base's model settings under each entry's
    imported = cells[2]
    assert imported.imported is not None and imported.imported.file == str(tmp_path / "descriptors.json")
    fs = cells[3].config.fewshot
    assert (fs.shots, fs.seeds, fs.methods, fs.augment_views) == ((1, 2), (1, 2), ("tip_adapter", "coder_adapter"), 1)
    cifar = next(c for c in cells if c.dataset == "cifar10").config.dataset
    assert cifar.kind == "wds" and cifar.source.endswith("wds_vtab-cifar10")
    # cell ids: the same cell has the same id in every reading of the file, and every cell its own
    again = expand(read_suite(tmp_path / "s.yaml", {"model": {"device": "cpu"}}))
    assert [c.cell_id for c in again] == [c.cell_id for c in cells] and len({c.cell_id for c in cells}) == len(cells)


def test_few_shot_adapters_are_cells_of_their_own(tmp_path: Path):
    data = _suite(tmp_path)
    data["suite"]["fewshot"]["adapters"] = [None, "adapter-0123"]
    cells = [c for c in expand(read_suite(_write(tmp_path / "s.yaml", data))) if c.kind == "fewshot"]
    assert [(c.axis, c.config.model.adapter) for c in cells] == [(None, None), ("adapter=adapter-0123", "adapter-0123")]
    assert cells[0].cell_id != cells[1].cell_id


def test_two_models_entries_never_share_a_label(tmp_path: Path):
    """An entry's label names what sets its image features apart (an adapter too); two entries that would share one
    (differing only in batch size) are refused, naming both, before any cell runs."""
    data = _suite(tmp_path)
    data["suite"]["models"] = [{"name": "RN50"}, {"name": "RN50", "adapter": "adapter-0123"}]
    assert {c.model for c in expand(read_suite(_write(tmp_path / "s.yaml", data)))} == {
        "RN50/random", "RN50/random/adapter=adapter-0123"
    }  # fmt: skip
    data["suite"]["models"] = [{"name": "RN50"}, {"name": "RN50", "batch_size": 8}]
    with pytest.raises(SuiteError, match=r"suite\.models\[0\] and suite\.models\[1\] are both model RN50/random"):
        expand(read_suite(_write(tmp_path / "s.yaml", data)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datasets": [{"name": "demo", "sorce": "/x"}]}, "datasets[0]: unknown key(s) ['sorce']"),
        ({"methods": ["clip", "coderr"]}, "unknown zero-shot method(s) ['coderr']"),
        ({"datasets": [{"benchmark": "cifar11"}]}, "cifar11"),
        ({"datasets": [{"name": "p", "kind": "folder"}]}, "suite.datasets[0] (p)"),
        ({"banks": ["offline", {"import": "nothere.json", "format": "dclip"}]}, "suite.banks[1]: file"),
        ({"banks": ["wordnet"]}, "bank 'wordnet'"),
        ({"banks": [{"import": "descriptors.json", "format": "dclip"}]}, "fewshot needs an offline or llm bank"),
        ({"fewshot": {"shots": [1], "methods": ["tip"]}}, "unknown few-shot method"),
        ({"fewshot": {"shots": [1], "datasets": ["flowers"]}}, "suite.fewshot.datasets: ['flowers']"),
        ({"models": [{"nme": "RN50"}]}, "models[0]: unknown key(s) ['nme']"),
        ({"colour": 1}, "suite.colour: unknown key"),
    ],
)
def test_mistakes_are_refused_naming_the_entry(tmp_path: Path, change: dict[str, Any], message: str):
    path = _write(tmp_path / "s.yaml", _suite(tmp_path, **change))
    with pytest.raises(SuiteError) as err:
        read_suite(path)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_cli_refuses_before_any_work(tmp_path: Path):
    data = _suite(tmp_path)
    data["suite"]["datasets"][1]["source"] = str(tmp_path / "typo")  # never ingested: a mistake, not a vanished source
    out = run_cli(["suite", "-c", _write(tmp_path / "s.yaml", data)])
    assert out.exit_code == 2 and "suite cell photos x ViT-S-32-alt/random (zeroshot)" in out.output, out.output
    assert "not found" in out.output and not (tmp_path / "work" / "suites").exists()
    data["unknown_section"] = 1
    out = run_cli(["suite", "-c", _write(tmp_path / "s.yaml", data)])
    assert out.exit_code == 2 and "unknown_section: unknown key" in out.output, out.output
    assert run_cli(["suite"]).exit_code == 2


def test_serve_deploys_a_suite_on_its_cron_schedule(tmp_path: Path):
    from prefect.flows import load_flow_from_entrypoint

    from coderflow.flows.serve import deployments

    file = read_suite(_write(tmp_path / "s.yaml", _suite(tmp_path)))
    deps = {d.flow_name: d for d in deployments(PipelineConfig(methods=("clip",)), cron="0 3 * * *", suite=file)}
    suite = deps["suite"]
    assert suite.name == "tiny" and [s.schedule.cron for s in suite.schedules] == ["0 3 * * *"]
    assert suite.parameters["spec"] == json.loads(file.model_dump_json())  # the whole suite file, as validated
    assert suite.parameters["spec"]["suite"]["banks"][1]["file"] == str(tmp_path / "descriptors.json")
    assert not deps["pipeline"].schedules  # the schedule is the suite's
    # a scheduled run gets the parameter as JSON: the same cells, with the same ids, come out of it
    assert [c.cell_id for c in expand(SuiteFile.model_validate(suite.parameters["spec"]))] == [
        c.cell_id for c in expand(file)
    ]
    assert load_flow_from_entrypoint(suite.entrypoint, use_placeholder_flow=False).name == "suite"


def _cells(layout: Layout, suite_id: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows = query(layout, "SELECT * FROM suite_cells WHERE suite_id = ?", params=[suite_id]).to_pylist()
    return {(r["dataset"], r["bank"], r["kind"]): r for r in rows}


def _suite_id(output: str) -> str:
    return re.findall(r"suite (\S+): \d+ of \d+ cells", output)[-1]


def _same_code(commit: str | None) -> None:
    """Skip when the checkout's commit changed while the test ran: the code is an input of every run, so no run would
    be up to date (work in the same checkout goes on while tests run)."""
    if versions()["git_commit"] != commit:
        pytest.skip("the checkout's git commit changed during the test: every stored run is rightly out of date")


def _latest_artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert found, f"no artifact {key!r}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data  # a table artifact's rows are stored as JSON


@pytest.mark.flow
def test_a_suite_runs_reuses_recomputes_only_what_is_missing_and_records_failures(prefect_server, tmp_path: Path):
    path = _write(tmp_path / "suite.yaml", _suite(tmp_path))
    layout = Layout.at(tmp_path / "work")
    commit = versions()["git_commit"]
    first = run_cli(["suite", "-c", path])
    assert first.exit_code == 0, first.output
    one = _cells(layout, _suite_id(first.output))
    assert len(one) == 2 * 2 + 1 and {r["status"] for r in one.values()} == {"completed"}, one
    assert len({r["run_id"] for r in one.values()}) == 5
    runs = {r["run_id"]: r for r in query(layout, "SELECT run_id, flow, dataset, config FROM runs").to_pylist()}
    for (dataset, bank, kind), r in one.items():
        run = runs[r["run_id"]]
        assert (run["flow"], run["dataset"]) == ({"zeroshot": "pipeline", "fewshot": "few-shot"}[kind], dataset)
        banks = json.loads(run["config"])["classify"]["banks"]
        # the imported bank is the one its cell's methods scored on, and the one its record names
        assert banks == ({m: r["textbank_id"] for m in ("clip", "coder", "coder_rerank")} if "import" in bank else None)
    fewshot = one["pets", "offline", "fewshot"]["run_id"]
    shots = query(layout, "SELECT DISTINCT shots, seed FROM metrics WHERE run_id = ? AND shots IS NOT NULL",
                  params=[fewshot]).to_pylist()  # fmt: skip
    assert sorted((r["shots"], r["seed"]) for r in shots) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    suite_dir = layout.suite_dir(_suite_id(first.output))
    assert yaml.safe_load((suite_dir / "suite.yaml").read_text())["suite"]["name"] == "tiny"
    assert [r["status"] for r in _latest_artifact("suite-cells")] == ["completed"] * 5
    assert _latest_artifact("suite-progress") == 100.0

    # unchanged: every cell answers from its stored run, in a fraction of the time
    second = run_cli(["suite", "-c", path])
    _same_code(commit)
    assert second.exit_code == 0, second.output
    two = _cells(layout, _suite_id(second.output))
    assert {k: (r["status"], r["run_id"]) for k, r in two.items()} == {
        k: ("reused", r["run_id"]) for k, r in one.items()
    }
    assert {k: r["cell_id"] for k, r in two.items()} == {k: r["cell_id"] for k, r in one.items()}
    assert sum(r["seconds"] for r in two.values()) < sum(r["seconds"] for r in one.values()) / 3

    # a suite killed before a cell finished: that cell has no run; the next run computes it and only it
    lost = one["photos", "offline", "zeroshot"]["run_id"]
    shutil.rmtree(layout.run_dir(lost))
    third = run_cli(["suite", "-c", path])
    _same_code(commit)
    assert third.exit_code == 0, third.output
    three = _cells(layout, _suite_id(third.output))
    assert {k for k, r in three.items() if r["status"] == "completed"} == {("photos", "offline", "zeroshot")}
    assert three["photos", "offline", "zeroshot"]["run_id"] != lost
    assert all(r["status"] == "reused" for k, r in three.items() if k != ("photos", "offline", "zeroshot"))

    # the folder of an ingested dataset vanished: its cells fail with their error, the others still answer
    (tmp_path / "photos").rename(tmp_path / "moved")
    fourth = run_cli(["suite", "-c", path])
    _same_code(commit)
    assert fourth.exit_code == 1, fourth.output
    four = _cells(layout, _suite_id(fourth.output))
    failed = {k: r for k, r in four.items() if r["status"] == "failed"}
    assert set(failed) == {("photos", "offline", "zeroshot"), ("photos", "import:descriptors.json", "zeroshot")}
    assert all(
        "photos" in r["error"] and ("not found" in r["error"] or "not exist" in r["error"]) for r in failed.values()
    )
    assert all(r["status"] == "reused" for k, r in four.items() if k not in failed)

    listed = run_cli(["suites", "--workdir", tmp_path / "work", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["done"], r["failed"], r["total"]) for r in rows] == [(3, 2, 5), (5, 0, 5), (5, 0, 5), (5, 0, 5)]
    assert [r["reused"] for r in rows] == [3, 4, 5, 0] and {r["name"] for r in rows} == {"tiny"}


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "deployments" / "suites").glob("*.yaml"))
)
def test_shipped_suite_files_validate(path: Path):
    cells = expand(read_suite(path))
    assert cells
    if path.name == "demo.yaml":
        assert all(c.config.model.pretrained is None for c in cells)  # offline: nothing to download
    else:  # a paper's grid: its datasets through their presets, CLIP's published weights
        assert all(c.config.preset and c.config.model.pretrained == "openai" for c in cells)
        assert all(c.config.dataset.kind == "coop" and c.config.dataset.coop_split_file for c in cells)


def test_class_count_axis_and_banks_compared_in_the_report(prefect_server, tmp_path: Path):
    """`classes`: nested class subsets as datasets of their own; the report plots them and compares the banks."""
    from coderflow.tasks.suite.axes import scaling_curves

    photos = tmp_path / "photos"
    for ci, name in enumerate(["cat", "dog", "owl"]):
        (photos / name).mkdir(parents=True)
        for i in range(3):
            (photos / name / f"{i}.png").write_bytes(png_bytes((70 * ci + 5 * i, 30 * i, 90), 24))
    spec = {
        "name": "axes", "datasets": [{"name": "photos", "kind": "folder", "source": str(photos)}],
        "models": [{"name": "ViT-S-32-alt"}], "classes": [2, 3], "methods": ["clip", "coder"],
        "banks": ["offline", {"name": "names-only", "offline": {"types": ["name"]}}],
    }  # fmt: skip
    data = {"workdir": str(tmp_path / "work"), "model": {"batch_size": 16}, "texts": {"types": ["name", "att"]},
            "templates": ["a photo of a {c}."], "suite": spec}  # fmt: skip
    out = run_cli(["suite", "-c", _write(tmp_path / "axes.yaml", data)])
    assert out.exit_code == 0, out.output
    suite_id, layout = _suite_id(out.output), Layout.at(tmp_path / "work")
    cells = query(layout, "SELECT dataset, bank, axis, status FROM suite_cells WHERE suite_id = ?", params=[suite_id])
    assert sorted((c["dataset"], c["bank"], c["axis"]) for c in cells.to_pylist()) == [
        ("photos-c2", "names-only", "classes=2"), ("photos-c2", "offline", "classes=2"),
        ("photos-c3", "names-only", "classes=3"), ("photos-c3", "offline", "classes=3"),
    ]  # fmt: skip
    classes = {
        d: {r["class_name"] for r in query(layout, "SELECT * FROM classes WHERE dataset = ?", params=[d]).to_pylist()}
        for d in ("photos-c2", "photos-c3")
    }
    assert len(classes["photos-c2"]) == 2 and classes["photos-c2"] < classes["photos-c3"]  # nested subsets
    rows = query(layout, "SELECT l.*, c.model, c.bank, c.axis, c.kind FROM leaderboard l JOIN suite_cells c "
                 "USING (suite_id, cell_id) WHERE l.suite_id = ?", params=[suite_id]).to_pylist()  # fmt: skip
    curves = scaling_curves(rows)
    assert sorted(curves) == [("photos", "ViT-S-32-alt/random", b) for b in ("names-only", "offline")]
    assert all(sorted(by) == [2, 3] for c in curves.values() for by in c.values())
    report = run_cli(["suite", "report", suite_id, "--workdir", tmp_path / "work", "-o", tmp_path / "axes.md"])
    assert report.exit_code == 0, report.output
    text = (tmp_path / "axes.md").read_text()
    assert "## Accuracy and cost against the number of classes" in text and text.count("data:image/svg+xml") >= 2
    assert "## Text banks compared (LLM sensitivity)" in text
    compared = text.split("## Text banks compared (LLM sensitivity)")[1]
    assert compared.count("| names-only | offline |") == 4  # clip and coder on both subsets, against the first bank

    html = tmp_path / "axes.html"
    assert (
        run_cli(["suite", "report", suite_id, "--workdir", tmp_path / "work", "--format", "html", "-o", html]).exit_code
        == 0
    )
    chromium = Chromium(tmp_path / "profile")
    try:  # the report as a browser shows it: its tables and figures
        chromium.open(html.as_uri())
        chromium.wait_for_text("Accuracy and cost against the number of classes", "Text banks compared", "names-only")
        shown = chromium.evaluate(
            "[document.querySelectorAll('table').length, [...document.querySelectorAll('svg')]"
            ".filter(s => s.getBoundingClientRect().width > 100).length]"
        )
    finally:
        chromium.close()
    assert shown[0] >= 5 and shown[1] >= 2, shown  # results tables per bank and subset, costs, banks; 2 figures
