"""The command line generated from the config models: flags, help, precedence, and one-line refusals before work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_runner import run_cli
from pydantic import BaseModel

from coderflow.catalog import check_model, open_clip_models, open_clip_pretrained
from coderflow.cli import COMMAND_SECTIONS, flag_name
from coderflow.config import FLAG_ALIASES, ClassifyConfig, PipelineConfig
from coderflow.console import sort_metrics
from coderflow.preflight import check_device

CLI = str(Path(sys.executable).with_name("coderflow"))


def leaf_keys(model: type[BaseModel], prefix: str = "", only: tuple[str, ...] | None = None) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if only is not None and name not in only:
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += leaf_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


@pytest.mark.parametrize("command", sorted(COMMAND_SECTIONS))
def test_every_setting_of_a_command_is_a_flag_in_its_help(command: str):
    out = run_cli([*command.split(), "--help"])
    assert out.exit_code == 0, out.output
    keys = leaf_keys(PipelineConfig, only=COMMAND_SECTIONS[command])
    missing = [k for k in keys if flag_name(k) not in out.output]
    assert keys and not missing, missing
    others = [k for k in leaf_keys(PipelineConfig) if k not in keys]
    shown = [k for k in others if f"{flag_name(k)} " in out.output]
    assert not shown, f"{command} shows flags of sections it does not read: {shown}"


def test_every_flag_reaches_the_config():
    """Each leaf setting, given as its flag, arrives in the resolved configuration (`coderflow config`)."""
    cfg = PipelineConfig()
    values = {
        "dataset.source": "/data/pets", "dataset.kind": "folder", "dataset.split_ratio": "0.6,0.2,0.2",
        "dataset.name": "pets", "methods": "clip,coder", "templates": "a {c}.", "workdir": "/tmp/w",
        "classify.banks": "dclip=abc", "texts.types": "att", "fewshot.methods": "tip_x", "preset": "pets",
        "texts.ovo_templates": "{a} not {b} by {x}", "runner": "dask", "texts.llm.base_url": "http://x",
        "model.precision": "bf16", "texts.generator": "llm", "texts.grammar": "off", "texts.ovo_pairs": "nearest",
        "coder.format": "sparse", "fewshot.search": "fixed", "adapter.head_input": "normalized",
        "texts.name_template": "an image of {c}", "texts.att_template": "{c} with {x}",
        "texts.ana_template": "{c} like {x}", "run_name": "mine", "runner_address": "tcp://h:1",
        "model.pretrained": "openai", "model.adapter": "ad1", "texts.llm.model": "m", "dataset.classnames_file": "c",
        "dataset.templates_file": "t", "model.name": "ViT-B-32", "model.device": "cuda", "dataset.split": "val",
        "fewshot.sampling": "per_class", "classify.cupl_mode": "both", "texts.dclip_after_text": ".",
        "fewshot.texts": "att_template={c} has {x}", "fewshot.test_datasets": "sketch=/data/sketch",
        "classify.rerank_thresholds": "0.05,0.2",
    }  # fmt: skip
    args = ["config"]
    for key in leaf_keys(PipelineConfig):
        if key == "dataset.benchmark":  # sets the source: given with one, refused (tests/test_benchmarks_by_name.py)
            continue
        node: object = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if key in values:
            value = values[key]
        elif isinstance(node, bool):
            args.append(flag_name(key))  # a switch
            continue
        elif isinstance(node, tuple) and len(node) == 2 and key != "fewshot.shots":
            value = ",".join(str(v + 1) for v in node)
        elif isinstance(node, tuple):
            value = ",".join(str(v) for v in node[:1])
        elif isinstance(node, int) or node is None:
            value = str((node or 2) + 1)
        elif isinstance(node, float):
            value = str(node / 2 if node else 0.5)
        else:
            value = f"{node}-x"
        args += [flag_name(key), value]
    out = run_cli(args)
    assert out.exit_code == 0, out.output
    got = yaml.safe_load(out.stdout)
    unchanged = []
    for key in leaf_keys(PipelineConfig):
        node_new, node_old = got, cfg.model_dump(mode="json")
        for part in key.split("."):
            node_new, node_old = node_new[part], node_old[part]
        if node_new == node_old and key not in ("preset", "dataset.benchmark"):
            unchanged.append(key)
    assert not unchanged, unchanged


def test_help_shows_choices_defaults_and_aliases():
    out = run_cli(["run", "--help"]).output
    assert "[choices: demo, folder, wds, coop]" in out and "[default: 64]" in out
    assert "clip, dclip, cupl, waffle, coder, coder_rerank" in re.sub(r"[\s│]+", " ", out)  # methods from the registry
    for dotted, aliases in FLAG_ALIASES.items():
        if dotted.split(".")[0] in COMMAND_SECTIONS["run"]:
            for alias in [aliases] if isinstance(aliases, str) else aliases:
                assert alias in out, alias
    assert run_cli(["--version"]).output.strip()[0].isdigit()


def test_clip_benchmark_and_open_clip_flags_work_as_typed(tmp_path: Path):
    """`--model NAME --pretrained TAG --dataset NAME --dataset_root DIR`, as CLIP_benchmark and open_clip spell them."""
    from conftest import write_clip_benchmark

    root = write_clip_benchmark(tmp_path / "cifar10-wds")
    work = str(tmp_path / "w")
    for root_flag in ("--dataset-root", "--dataset_root"):
        out = run_cli(["config", "--model", "ViT-S-32-alt", "--pretrained", "openai", "--dataset", "cifar10",
                       root_flag, str(root), "--workdir", work])  # fmt: skip
        assert out.exit_code == 0, out.output
        got = yaml.safe_load(out.stdout)
        assert got["model"]["name"] == "ViT-S-32-alt" and got["model"]["pretrained"] == "openai"
        assert (got["dataset"]["name"], got["dataset"]["source"], got["dataset"]["kind"]) == (
            "cifar10",
            str(root),
            "wds",
        )
    no_root = ["--model", "ViT-S-32-alt", "--dataset", "cifar10", "--workdir", work]
    refused = run_cli(["run", *no_root])  # a benchmark's name alone would be the demo data under that name
    assert refused.exit_code == 2 and refused.output.strip().splitlines() == [
        "error: dataset 'cifar10' has no source: give --dataset-root (a CLIP_benchmark root or folder)"
    ]
    assert not Path(work).exists()
    out = run_cli(["ingest", "--dataset", "cifar10", "--dataset-root", str(root), "--workdir", work])
    assert out.exit_code == 0 and "6 samples in" in out.output, out.output
    assert yaml.safe_load(run_cli(["config", *no_root]).stdout)["dataset"]["name"] == "cifar10"
    from coderflow.preflight import check_benchmark_source

    check_benchmark_source(PipelineConfig(workdir=work, dataset={"name": "cifar10"}))  # ingested here: no source needed


@pytest.mark.parametrize("command", sorted(COMMAND_SECTIONS))
def test_help_shows_a_description_and_the_real_default_of_every_flag(command: str):
    out = run_cli([*command.split(), "--help"], env={"COLUMNS": "400"})  # one line per flag
    assert out.exit_code == 0 and "PydanticUndefined" not in out.output
    if command == "run":
        assert "[default: clip,dclip,cupl,waffle,coder,coder_rerank]" in out.output
    rows = [re.sub(r"^[│ *]+", "", line).rstrip("│ ") for line in out.output.splitlines() if re.match(r"│[ *]+-", line)]
    assert len(rows) > 5
    bare = [r.split()[0] for r in rows if len(parts := re.split(r"\s{2,}", r)) < 2 or parts[1].startswith("[")]
    assert not bare, f"flags without a description: {bare}"


def _tsv(text: str) -> list[dict[str, str]]:
    header, *lines = text.splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


@pytest.mark.flow
def test_runs_and_adapter_train_keep_whole_ids_in_a_pipe_and_on_80_columns(demo_run, tmp_path: Path):
    """Piped: tab-separated lines under a header; on an 80-column terminal: nothing cut with an ellipsis. A pipeline
    run is listed as `pipeline` with its whole duration, and `--model` matches the architecture as well as the id."""
    work, result = str(demo_run["workdir"]), demo_run["result"]
    piped = run_cli(["runs", "--workdir", work], env={"TTY_COMPATIBLE": "0"})
    assert piped.exit_code == 0, piped.output
    (row,) = [r for r in _tsv(piped.stdout) if r["run_id"] == result.run_id]
    assert row["flow"] == "pipeline" and row["model_id"] == "ViT-S-32-alt__random"
    assert float(row["seconds"]) >= result.stages["ingest"] + result.stages["embed"] + result.stages["classify"]
    for args in (["--flow", "pipeline"], ["--model", "ViT-S-32-alt"], ["--model", "ViT-S-32-alt__random"]):
        listed = run_cli(["runs", "--workdir", work, *args, "--format", "json"])
        assert result.run_id in {r["run_id"] for r in json.loads(listed.stdout)}, args
    for args in (["--flow", "classify"], ["--model", "ViT-S-32"]):
        assert result.run_id not in run_cli(["runs", "--workdir", work, *args]).stdout, args
    terminal = run_cli(["runs", "--workdir", work], env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert result.run_id in terminal.stdout and "…" not in terminal.stdout, terminal.stdout

    train = ["adapter", "train", "--workdir", str(tmp_path), "--dataset.demo-images-per-class", "2",
             "--dataset.samples-per-shard", "8", "--adapter.batch-size", "8"]  # fmt: skip
    out = run_cli(train, env={"TTY_COMPATIBLE": "0"})
    assert out.exit_code == 0, out.output
    (trained,) = _tsv(out.stdout.split("use it with")[0])
    adapter_id = trained["adapter_id"]
    assert Path(trained["path"]).is_file() and adapter_id in Path(trained["path"]).name
    again = run_cli(train, env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"})
    assert again.exit_code == 0 and adapter_id in again.stdout and "…" not in again.stdout, again.stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", again.stdout)  # without the terminal's styles
    assert trained["path"] in re.sub(r"\s*\n\s*", "", plain)  # folded over lines, never cut


def test_precedence_flags_over_environment_over_yaml_over_defaults(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"batch_size": 8, "device": "cpu"}, "coder": {"top_k": 5}}))

    def resolved(*args: str, env: dict[str, str] | None = None) -> dict:
        out = run_cli(["config", "-c", str(path), *args], env=env)
        assert out.exit_code == 0, out.output
        return yaml.safe_load(out.stdout)

    assert resolved()["model"]["batch_size"] == 8  # YAML over the default 64
    assert resolved(env={"CODERFLOW_MODEL_BATCH_SIZE": "16"})["model"]["batch_size"] == 16  # env over YAML
    got = resolved("--model.batch-size", "32", env={"CODERFLOW_MODEL_BATCH_SIZE": "16"})
    assert got["model"]["batch_size"] == 32 and got["coder"]["top_k"] == 5  # flag over env; the rest of YAML kept
    assert resolved("--coder.format", "sparse")["coder"] == {"format": "sparse", "top_k": 5, "batch_size": 2048}


REFUSALS = [
    (["run", "--methods", "clip,codr"], ["methods", "codr", "coder_rerank"]),
    (["run", "--source", "/nonexistent"], ["/nonexistent", "not found", "--dataset.source"]),
    (["texts", "--workdir", "{w}"], ["not ingested", "coderflow ingest"]),
    (["run", "--device", "cuda:7"], ["--model.device", "cuda:7", "--model.device cpu"]),
    (["run", "--device", "gpu"], ["--model.device", "'gpu'"]),
    (["run", "--model.name", "ViT-B-32", "--pretrained", "laion9"], ["laion9", "ViT-B-32", "openai"]),
    (["run", "--model.name", "ViT-Q"], ["unknown open_clip model", "--model.name"]),
    (["run", "--pretrained", "/no/weights.pt"], ["/no/weights.pt", "no such checkpoint file"]),
    (["fewshot", "--source", "/no/photos/{split}", "--kind", "folder"], ["/no/photos/train", "split 'train'"]),
    (["query", "--canned", "accuracy"], ["--canned 'accuracy'", "accuracy_per_method"]),
    (["query", "--canned", "accuracy_per_method", "--format", "xlsx"], ["xlsx", "table", "csv", "json"]),
    (["query", "SELECT 1", "--workdir", "{w}/nothing"], ["not a coderflow work directory"]),
    (["run", "--bogus", "1"], ["--bogus"]),
    (["run", "config.yaml"], ["config.yaml", "-c"]),
    (["run", "-c", "/no/such.yaml"], ["/no/such.yaml", "not found"]),
    (["run", "--kind", "folder"], ["dataset.kind", "needs dataset.source"]),
    (["run", "--split-ratio", "0.5,0.5"], ["0.5,0.5", "train,val,test"]),
    (["run", "--texts.llm.timeout", "0"], ["texts.llm.timeout", "greater than 0"]),
    (["texts", "--texts.llm.base-url", "http://u:SECRET@host/v1"], ["texts.llm.base_url", "credentials"]),
]


# The console script, run so that it records which heavy modules it loaded before exiting: a refusal comes before
# any work (no Prefect, torch, open_clip or polars loaded). How fast that is: benchmarks/cli_refusals.py.
HEAVY = ("prefect", "torch", "open_clip", "polars")
TRACED_CLI = (
    "import atexit, os, sys\n"
    f"atexit.register(lambda: open(os.environ['LOADED_FILE'], 'w').write(' '.join(m for m in {HEAVY!r} if m in sys.modules)))\n"
    "from coderflow.cli import entry\n"
    "sys.argv[0] = 'coderflow'\n"
    "entry()\n"
)


@pytest.mark.parametrize(("args", "needles"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_mistakes_are_refused_in_one_line_before_any_work(tmp_path: Path, args: list[str], needles: list[str]):
    args = [a.replace("{w}", str(tmp_path)) for a in args]
    if "--workdir" not in args and args[0] != "query":
        args += ["--workdir", str(tmp_path / "w")]
    loaded = tmp_path / "loaded.txt"
    done = subprocess.run(
        [sys.executable, "-c", TRACED_CLI, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        check=False, env={**os.environ, "LOADED_FILE": str(loaded)},
    )  # fmt: skip
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines[0]
    assert loaded.read_text() == ""  # refused before any heavy module was loaded, let alone a flow started
    assert "SECRET" not in lines[0]
    assert not (tmp_path / "w").exists() and not (tmp_path / "nothing").exists()  # nothing created


def test_query_list_names_every_canned_question():
    out = run_cli(["query", "--list"])
    assert out.exit_code == 0
    for path in (Path(__file__).resolve().parents[1] / "storage" / "sql").glob("*.sql"):
        assert path.stem in out.output


def test_registry_names_are_the_default_methods_and_one_entry_adds_a_method(monkeypatch):
    from coderflow.storage.arrays import TextSet
    from coderflow.tasks.classify import zeroshot

    assert PipelineConfig().methods == tuple(zeroshot.SCORERS)
    with pytest.raises(ValueError, match="unknown zero-shot method"):
        PipelineConfig(methods=["nearest_name"])

    def nearest_name(name, inputs):  # a new method: the cosine to the class's name prompt
        b = inputs.bank_of(name)
        scores = (inputs.x @ b.t.T)[:, b.text_type == "name"]
        return [zeroshot.MethodResult(name, scores, logits=False)]

    monkeypatch.setitem(zeroshot.SCORERS, "nearest_name", nearest_name)
    assert PipelineConfig(methods=["clip", "nearest_name"]).methods == ("clip", "nearest_name")
    t = np.eye(3, dtype=np.float32)
    bank = TextSet(["a", "b", "c"], np.arange(3), np.array(["name"] * 3), np.full(3, -1), ["x", "y", "z"], t)
    x = np.array([[0.1, 0.9, 0.0]], dtype=np.float32)
    (result,) = zeroshot.run_methods(["nearest_name"], x, bank, ClassifyConfig())
    assert result.scores.argmax() == 1


def test_metrics_are_sorted_by_top1_with_the_difference_to_clip():
    rows = [
        {"method": "clip", "shots": None, "top1": 0.5},
        {"method": "coder", "shots": None, "top1": 0.625},
        {"method": "dclip", "shots": None, "top1": 0.25},
    ]
    out = sort_metrics(rows)
    assert [r["method"] for r in out] == ["coder", "clip", "dclip"]
    assert [r["vs_clip"] for r in out] == [0.125, 0.0, -0.25]


def test_model_checks_read_open_clip_without_importing_it():
    assert "ViT-B-32" in open_clip_models() and "openai" in open_clip_pretrained()["ViT-B-32"]
    check_model("ViT-B-32", "openai")
    check_model("ViT-B-32", "OpenAI")  # open_clip normalises tag case
    check_model("hf-hub:org/model", None)
    with pytest.raises(ValueError, match="not an open_clip tag of ViT-B-32"):
        check_model("ViT-B-32", "laion9")


def test_device_check(monkeypatch):
    import coderflow.preflight as pf

    check_device("cpu")
    monkeypatch.setattr(pf, "_cuda_devices", lambda: 2)
    check_device("cuda")
    check_device("cuda:1")
    with pytest.raises(ValueError, match="has 2 GPU"):
        check_device("cuda:2")


def test_tasks_retry_transient_errors_only():
    from prefect.states import Completed, Failed

    from coderflow.tasks import retry_transient
    from coderflow.tasks.texts.llm_endpoint import LLMConfigError

    for exc in (ValueError("bad"), FileNotFoundError("x"), LLMConfigError("no key")):
        assert not retry_transient(None, None, Failed(data=exc))
    assert retry_transient(None, None, Failed(data=ConnectionError("reset")))
    assert retry_transient(None, None, Completed(data=1))


def test_a_commands_own_option_never_reads_a_settings_variable(demo_run):
    """CODERFLOW_METHODS is the `methods` setting of run/classify; `compare --methods A,B` does not read it."""
    run_id, work = demo_run["result"].run_id, str(demo_run["workdir"])
    out = run_cli(["compare", run_id, "--workdir", work, "--format", "json", "--resamples", "20"],
                  env={"CODERFLOW_METHODS": "coder,nope"})  # fmt: skip
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)) == 4  # every stored method against clip (no cupl: the bank has no CuPL text)
