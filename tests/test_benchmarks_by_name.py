"""Benchmarks by name: `--benchmark NAME` reads a CLIP_benchmark dataset from a hub organisation or a mirror of it."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli
from conftest import write_clip_benchmark

from coderflow.config import PipelineConfig, build_config
from coderflow.preflight import check_benchmark_root
from coderflow.presets import load_preset, preset_names
from coderflow.presets.benchmarks import BENCHMARKS, DEFAULT_BENCHMARK_BASE, find_benchmark
from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.ingest.checks import listing_changes, source_listing

CLI = str(Path(sys.executable).with_name("coderflow"))
CLASSES = ("airplane", "automobile", "bird")  # a tiny mirror: its classnames.txt is the truth, not the catalog's 10


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A mirror of the hub organisation holding one dataset, cifar10, in CLIP_benchmark's layout."""
    write_clip_benchmark(tmp_path / "mirror" / "wds_vtab-cifar10", classes=CLASSES)
    return tmp_path / "mirror"


@pytest.fixture
def served(mirror: Path):
    """The mirror over HTTP (python's http.server), as a base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


# the catalog -------------------------------------------------------------------------------------------------------
def test_the_catalog_knows_the_benchmarks_and_where_each_is_published():
    for name in ("cifar10", "cifar100", "imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r",
                 "cars", "fgvc_aircraft", "food101", "sun397", "vtab/pets", "vtab/dtd", "vtab/eurosat",
                 "vtab/caltech101", "vtab/flowers", "vtab/svhn", "vtab/resisc45"):  # fmt: skip
        assert find_benchmark(name) is not None, name
    # CLIP_benchmark's wds/<name> is read from wds_<name with / as -> (its cli.py dataset_cleaned)
    assert find_benchmark("cifar10").url() == "hf://datasets/clip-benchmark/wds_vtab-cifar10"  # type: ignore[union-attr]
    assert find_benchmark("imagenet-a").folder == "wds_imagenet-a"  # type: ignore[union-attr]
    for spelling in ("vtab/cifar10", "wds/vtab/cifar10", "wds_vtab-cifar10", "CIFAR10 "):
        assert find_benchmark(spelling) is find_benchmark("cifar10"), spelling
    assert find_benchmark("cifar11") is None and find_benchmark("mscoco_captions") is None  # retrieval: left out
    for bench in BENCHMARKS.values():
        assert bench.preset is None or bench.preset in preset_names(), bench
        assert "test" in bench.splits and bench.classes >= 2, bench
    assert len({b.short for b in BENCHMARKS.values()}) == len(BENCHMARKS)  # `pets` names one dataset


# config resolution (pure) ------------------------------------------------------------------------------------------
def test_a_benchmark_sets_kind_source_name_and_its_preset(mirror: Path):
    cfg = build_config(None, {"dataset": {"benchmark": "cifar10", "benchmark_base": f"{mirror}/"}})
    ds = cfg.dataset
    assert (ds.kind, ds.source, ds.name, ds.benchmark) == (
        "wds",
        f"{mirror}/wds_vtab-cifar10",
        "cifar10",
        "vtab/cifar10",
    )
    assert cfg.preset is None  # cifar10 has no preset: the defaults, and the root's templates
    assert build_config(None, cfg.model_dump(mode="json")) == cfg  # a stored config validates again as it was

    pets = build_config(None, {"dataset": {"benchmark": "pets"}})  # the hub by default
    assert pets.dataset.source == f"{DEFAULT_BENCHMARK_BASE}/wds_vtab-pets" and pets.dataset.name == "pets"
    assert pets.preset == "pets" and pets.texts.name_template == load_preset("pets")["config"]["texts"]["name_template"]
    mine = build_config(None, {"dataset": {"benchmark": "pets", "name": "my-pets"}, "texts": {"name_template": "{c}"}})
    assert (mine.dataset.name, mine.preset, mine.texts.name_template) == ("my-pets", "pets", "{c}")  # explicit wins
    assert build_config(None, {"dataset": {"benchmark": "pets"}, "preset": "dtd"}).preset == "dtd"
    from coderflow.config import DatasetConfig

    assert PipelineConfig(dataset=DatasetConfig(benchmark="vtab/dtd")).preset == "dtd"  # a section object too


def test_the_fingerprint_is_the_one_of_the_same_root_given_as_a_source(mirror: Path):
    """A benchmark decides the ingested data through its source alone: the same root given with --source (or a
    dataset ingested before these settings existed) keeps its fingerprint, so nothing is ingested again."""
    by_name = build_config(None, {"dataset": {"benchmark": "cifar10", "benchmark_base": str(mirror)}}).dataset
    by_source = build_config(None, {"dataset": {"source": str(mirror / "wds_vtab-cifar10"), "name": "cifar10"}}).dataset
    assert by_name.fingerprint() == by_source.fingerprint()


def test_the_base_comes_from_the_environment_too(mirror: Path, tmp_path: Path):
    env = {"CODERFLOW_DATASET_BENCHMARK_BASE": str(mirror)}
    out = run_cli(["config", "--benchmark", "cifar10", "--workdir", str(tmp_path / "w")], env=env)
    assert out.exit_code == 0, out.output
    got = yaml.safe_load(out.stdout)["dataset"]
    assert got["source"] == f"{mirror}/wds_vtab-cifar10" and got["benchmark_base"] == str(mirror)
    flag = run_cli(["config", "--benchmark", "cifar10", "--dataset.benchmark-base", "http://h/m"], env=env)
    assert yaml.safe_load(flag.stdout)["dataset"]["source"] == "http://h/m/wds_vtab-cifar10"  # flags over env


def test_the_default_base_needs_no_hub_client_until_it_is_read():
    code = (
        "import sys; from coderflow.config import build_config; build_config(None, {'dataset': {'benchmark': 'pets'}});"
    )
    code += "assert 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# refusals -----------------------------------------------------------------------------------------------------------
UNKNOWN = ["dataset.benchmark", "'cifar11'", "did you mean 'cifar10'", "pets", "imagenet-r", "`coderflow datasets`"]
REFUSALS = [
    (["--benchmark", "cifar11"], UNKNOWN),
    (["--benchmark", "cifar10", "--source", "/data/x"], ["wds_vtab-cifar10", "/data/x", "one of them"]),
    (["--benchmark", "cifar10", "--kind", "folder"], ["kind wds", "'folder'", "--kind"]),
    (["--benchmark", "cifar10", "--benchmark-base", "{t}/no-mirror"], ["no-mirror", "wds_vtab-cifar10", "mirror"]),
    (["--benchmark", "pets", "offline"], ["HF_HUB_OFFLINE", "hf://datasets/clip-benchmark/wds_vtab-pets", "-base"]),
]


@pytest.mark.parametrize(("args", "needles"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_mistakes_are_refused_before_any_work_in_one_line(tmp_path: Path, args: list[str], needles: list[str]):
    args = [a.replace("{t}", str(tmp_path)) for a in args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} if "offline" in args else None
    args = [a for a in args if a != "offline"]
    start = time.perf_counter()
    done = subprocess.run([CLI, "run", *args, "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                          timeout=60, check=False, env=env)  # fmt: skip
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines[0]
    assert time.perf_counter() - start < 5.0
    assert not (tmp_path / "w").exists()


# coderflow datasets -------------------------------------------------------------------------------------------------
def test_datasets_lists_one_line_per_benchmark_in_a_pipe_and_on_80_columns():
    piped = run_cli(["datasets"], env={"TTY_COMPATIBLE": "0"})
    assert piped.exit_code == 0, piped.output
    lines = piped.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "splits", "classes", "preset"] and len(lines) == len(BENCHMARKS) + 1
    assert "vtab/pets\ttrain,test\t37\tpets" in lines and "vtab/cifar10\ttrain,test\t10\t" in lines
    terminal = run_cli(["datasets"], env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal.stdout)
    rows = [line for line in plain.splitlines() if "│" in line]
    assert len(rows) == len(BENCHMARKS) and max(len(line) for line in plain.splitlines()) <= 80, plain
    assert "vtab/kitti_closest_vehicle_distance" in plain and "…" not in plain  # a table, nothing cut
    json_rows = yaml.safe_load(run_cli(["datasets", "--format", "json"]).stdout)
    assert {"name": "food101", "splits": "train,test", "classes": 101, "preset": "food101"} in json_rows


# the source listing of a mirror -------------------------------------------------------------------------------------
def test_a_changed_shard_of_a_mirror_over_http_is_noticed(mirror: Path, served: str):
    """http.server sends no ETag: its Last-Modified tells a rewritten shard of the same size from the old one."""
    cfg = build_config(None, {"dataset": {"benchmark": "cifar10", "benchmark_base": served}}).dataset
    before = source_listing(cfg)
    assert source_listing(cfg) == before and all(v[1] for v in before.values()), before
    shard = mirror / "wds_vtab-cifar10" / "test" / "1.tar"
    os.utime(shard, (time.time() + 60, time.time() + 60))
    assert listing_changes(before, source_listing(cfg)) == "0 added, 0 removed, 1 modified"


def test_a_mirror_url_without_the_benchmark_is_refused_before_any_work(served: str):
    cfg = build_config(None, {"dataset": {"benchmark": "pets", "benchmark_base": served}})
    with pytest.raises(ValueError, match=r"wds_vtab-pets/classnames.txt not found: the base .* has no root"):
        check_benchmark_root(cfg)
    check_benchmark_root(build_config(None, {"dataset": {"benchmark": "cifar10", "benchmark_base": served}}))


# end to end ---------------------------------------------------------------------------------------------------------
@pytest.mark.flow
def test_run_a_benchmark_from_a_mirror_folder_then_over_http(prefect_server, mirror: Path, served: str, tmp_path):
    work = str(tmp_path / "w")
    tiny = ["--workdir", work, "--texts.types", "name", "--methods", "clip", "--model.batch-size", "8"]
    out = run_cli(["run", "--benchmark", "cifar10", "--dataset.benchmark-base", str(mirror), *tiny])
    assert out.exit_code == 0, out.output
    layout = Layout.at(work)
    runs = query(layout, "SELECT dataset, count(*) AS n FROM runs GROUP BY dataset").to_pylist()
    assert runs == [{"dataset": "cifar10", "n": 1}]
    assert query(layout, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 6}]
    assert layout.classnames_file("cifar10").read_text().splitlines() == list(CLASSES)  # the mirror's own classes
    assert "a blurry photo of a {c}." in layout.templates_file("cifar10").read_text()  # the root's templates

    # the same name from another base is another source: refused before any work, then replaced on request
    again = run_cli(["run", "--benchmark", "cifar10", "--benchmark-base", served, *tiny])
    assert again.exit_code == 2 and "--replace-dataset" in again.output, again.output
    out = run_cli(["run", "--benchmark", "cifar10", "--benchmark-base", served, "--replace-dataset", *tiny])
    assert out.exit_code == 0, out.output
    newest = "SELECT run_id FROM runs WHERE dataset = 'cifar10' ORDER BY started_at DESC LIMIT 1"
    assert query(layout, f"SELECT count(*) AS n FROM predictions WHERE run_id = ({newest})").to_pylist() == [{"n": 6}]
    identity = yaml.safe_load(layout.dataset_identity("cifar10").read_text())
    assert identity["source"] == f"{served.rstrip('/')}/wds_vtab-cifar10" and identity["kind"] == "wds"
