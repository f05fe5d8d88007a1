"""Paired comparisons of methods and runs: exact McNemar, bootstrap intervals, `coderflow compare` and `runs`."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from cli_runner import run_cli

from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.tasks.evaluate.compare import bootstrap_ci, compare, mcnemar_exact


def exact_reference(b: int, c: int) -> float:
    """Two-sided exact McNemar with integer arithmetic: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(comb(n, i) for i in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 10), (10, 1), (5, 5), (0, 7), (37, 61), (400, 455)])
def test_mcnemar_exact_matches_integer_arithmetic(b: int, c: int):
    assert mcnemar_exact(b, c) == pytest.approx(exact_reference(b, c), rel=1e-9, abs=1e-300)


def test_mcnemar_textbook_value():
    assert mcnemar_exact(1, 10) == pytest.approx(2 * (1 + 11) / 2**11)  # 0.01171875


def test_bootstrap_interval_is_seeded_and_shrinks_with_samples():
    rng = np.random.default_rng(1)
    a, b = rng.random(400) < 0.7, rng.random(400) < 0.6
    low, high = bootstrap_ci(a, b, 1000, seed=3)
    assert (low, high) == bootstrap_ci(a, b, 1000, seed=3)
    assert low < a.mean() - b.mean() < high
    big_a, big_b = np.tile(a, 25), np.tile(b, 25)  # same difference, 25x the samples
    low2, high2 = bootstrap_ci(big_a, big_b, 1000, seed=3)
    assert high2 - low2 < (high - low) / 3


def test_compare_counts_the_discordant_pairs():
    a = np.array([1, 1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 1], bool)
    c = compare("x", "y", a, b, resamples=100)
    assert (c.n, c.only_a, c.only_b) == (6, 2, 1)
    assert c.difference == pytest.approx(4 / 6 - 3 / 6) and c.p_value == pytest.approx(exact_reference(2, 1))
    with pytest.raises(ValueError, match="same samples"):
        compare("x", "y", a, b[:3])


def test_compare_and_runs_commands(demo_run):
    work = str(demo_run["workdir"])
    run_id = demo_run["result"].run_id
    out = run_cli(["compare", run_id, "--workdir", work, "--format", "json", "--resamples", "200"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert {r["method_b"] for r in rows} == {"clip"} and "coder" in {r["method_a"] for r in rows}
    keys = {"method_a", "method_b", "n", "accuracy_a", "accuracy_b", "difference", "ci_low", "ci_high", "p_value"}
    assert all(keys <= set(r) and r["n"] == 30 and r["ci_low"] <= r["difference"] <= r["ci_high"] for r in rows)
    per_class = json.loads(
        run_cli(["compare", run_id, run_id, "--methods", "coder,clip", "--per-class", "--workdir", work,
                 "--format", "json", "--resamples", "50"]).stdout
    )  # fmt: skip
    assert len(per_class) == 1 + 10 and sum(r["n"] for r in per_class if r["class_index"] is not None) == 30
    refused = run_cli(["compare", run_id, "--methods", "coder,nope", "--workdir", work])
    assert refused.exit_code == 2 and "no method ['nope']" in refused.output
    listed = run_cli(["runs", "--workdir", work, "--format", "json"])
    (run,) = [r for r in json.loads(listed.stdout) if r["run_id"] == run_id]  # other tests may add runs
    assert run["status"] == "completed" and run["seconds"] > 0
    assert "coder" in run["top1"] and run["flow_run"]
    (view,) = query(
        Layout.at(work), "SELECT duration_s, flow_run_id FROM runs WHERE run_id = ?", params=[run_id]
    ).to_pylist()
    assert view["duration_s"] > 0 and view["flow_run_id"] == str(demo_run["result"].flow_run_id)  # the pipeline's
    assert json.loads(run_cli(["runs", "--workdir", work, "--flow", "few-shot", "--format", "json"]).stdout) == []


def _add_shard(root, index: int, keys: range) -> None:
    """One more CLIP_benchmark shard of new images (the keys continue the existing ones)."""
    import webdataset as wds
    from conftest import png_bytes

    with wds.TarWriter(str(root / "test" / f"{index}.tar")) as w:
        for k in keys:
            w.write({"__key__": f"s{k:07d}", "webp": png_bytes((k * 20 % 255, 90, 30)), "cls": k % 2})
    (root / "test" / "nshards.txt").write_text(f"{index + 1}\n")


@pytest.mark.flow
def test_compare_pairs_only_the_same_images(prefect_server, tmp_path):
    from conftest import write_clip_benchmark

    work = tmp_path / "w"
    base = ["--workdir", str(work), "--kind", "wds", "--texts.types", "name", "--methods", "clip"]
    cifar = write_clip_benchmark(tmp_path / "cifar10")  # keys s0000000..s0000005
    stl = write_clip_benchmark(tmp_path / "stl10", n_shards=1, per_shard=4, classes=("plane", "ship"))  # same keys

    def run(source) -> str:
        out = run_cli(["run", "--source", str(source), *base])
        assert out.exit_code == 0, out.output
        return query(Layout.at(work), "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")["run_id"][0].as_py()

    run_a, run_b = run(cifar), run(stl)
    # two datasets whose sample keys coincide: nothing to pair, refused in one line
    out = run_cli(["compare", run_a, run_b, "--workdir", str(work)])
    assert out.exit_code == 2, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert "share no image" in out.output and "cifar10/test" in out.output and "stl10/test" in out.output
    sql = "SELECT count(*) AS n FROM paired_predictions(?, 'clip', ?, 'clip')"
    assert query(Layout.at(work), sql, params=[run_a, run_b])["n"][0].as_py() == 0  # the SQL macro agrees
    hashes = query(Layout.at(work), "SELECT count(image_hash) AS n FROM predictions WHERE run_id = ?", params=[run_a])
    assert hashes["n"][0].as_py() == 6  # every prediction carries its image's content hash

    # the same dataset grown by 3 images: the 6 common images are paired, and the partial overlap is said
    _add_shard(cifar, 2, range(6, 9))
    run_c = run(cifar)
    out = run_cli(["compare", run_a, run_c, "--workdir", str(work), "--format", "json", "--resamples", "50"])
    assert out.exit_code == 0, out.output
    assert [r["n"] for r in json.loads(out.stdout)] == [6]
    assert f"paired 6 of 9 samples ({run_a}: 6, {run_c}: 9)" in out.output
    assert query(Layout.at(work), sql, params=[run_a, run_c])["n"][0].as_py() == 6
