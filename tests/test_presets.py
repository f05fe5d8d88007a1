"""Protocol presets: bundled data files that set per-dataset settings; explicit settings win over them."""

from __future__ import annotations

import pytest
import yaml
from cli_runner import run_cli

from coderflow.config import FewShotConfig, PipelineConfig, build_config
from coderflow.presets import load_preset, preset_names

PAPER_DATASETS = {
    "imagenet", "caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "flowers102", "pets", "cars", "sun397",
    "ucf101", "cub", "places365",
}  # fmt: skip


def test_every_paper_dataset_has_a_valid_preset_citing_its_sources():
    assert set(preset_names()) >= PAPER_DATASETS
    for name in preset_names():
        preset = load_preset(name)
        cfg = PipelineConfig(preset=name)  # every key it sets is a real, valid setting
        flat = _flatten(preset["config"])
        assert set(flat) == set(preset["sources"]), name  # each value names the reference file it comes from
        for key, value in flat.items():
            got = cfg
            for part in key.split("."):
                got = got[part] if isinstance(got, dict) else getattr(got, part)  # fewshot.texts is a mapping
            assert got == (tuple(value) if isinstance(value, list) else value), (name, key)


def test_reference_values():
    """Spot checks against the reference repositories (CODER utils.py get_thres, Tip-Adapter configs, CODER configs)."""
    pets = PipelineConfig(preset="pets")
    assert pets.classify.rerank_threshold == 0.1 and pets.texts.name_template == "a photo of a {c}, a type of pet."
    assert pets.fewshot.tip_search_scale == (7, 3) and pets.fewshot.coder_init == (1.0, 26.0)
    dtd = PipelineConfig(preset="dtd")
    assert dtd.classify.rerank_threshold == 0.6 and dtd.fewshot.tip_search_scale == (13, 13)
    assert PipelineConfig(preset="flowers102").fewshot.tip_search_scale == (50, 50)
    assert len(PipelineConfig(preset="imagenet").templates) == 7
    assert len(PipelineConfig(preset="cub").texts.ovo_templates) == 11
    assert PipelineConfig().texts.name_template == "a photo of {c}"  # unknown datasets: CODER's default


def test_explicit_settings_win_over_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "pets", "classify": {"rerank_threshold": 0.7}}))
    cfg = build_config(path, **{"fewshot.augment_views": 3})
    assert cfg.classify.rerank_threshold == 0.7 and cfg.fewshot.augment_views == 3
    assert cfg.fewshot.coder_init == (1.0, 26.0)  # the rest still comes from the preset
    given = PipelineConfig(preset="pets", fewshot=FewShotConfig(shots=(1,)))
    assert given.fewshot.shots == (1,) and given.fewshot.coder_init == (1.0, 26.0)


def test_unknown_preset_is_refused_with_the_list():
    with pytest.raises(ValueError) as err:
        build_config(None, preset="petz")
    assert "unknown preset 'petz'" in str(err.value) and "pets" in str(err.value)
    out = run_cli(["run", "--preset", "petz"])
    assert out.exit_code == 2 and "unknown preset 'petz'" in out.output


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
