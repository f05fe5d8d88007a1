"""The few-shot bank uses CODER's few-shot wordings where CODER has them (classify_few_shot.py:129, task_type
'few-shot'): Pets and DTD att/ana templates are zero-shot only, EuroSAT's few-shot class names are eurosat1.txt."""

from __future__ import annotations

import pytest

from coderflow.config import FewShotConfig, PipelineConfig, TextsConfig
from coderflow.tasks.texts.bank import text_classnames

EUROSAT1 = (
    "Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
    "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake",
)  # fmt: skip


def _coder_att(dataset: str, c: str, att: str, task_type: str) -> str:
    """CVPR24-CODER CODER/template.py get_att_templates."""
    if dataset == "eurosat":
        return "A satellite photo of " + c + " which has " + att + "."
    if dataset == "oxford-pet" and task_type == "zero-shot":
        return "A pet photo of " + c + " which has " + att + "."
    if dataset == "DTD" and task_type == "zero-shot":
        return "The texture of " + c + " is characterized by its " + att + " feature."
    return c + " which has " + att


def _coder_ana(dataset: str, c: str, ana: str, task_type: str) -> str:
    """CVPR24-CODER CODER/template.py get_ana_templates."""
    if dataset == "eurosat":
        return "A satellite photo of " + f"a {c} similar to {ana}."
    if dataset == "oxford-pet" and task_type == "zero-shot":
        return "A pet photo of " + f"a {c} similar to {ana}."
    if dataset == "DTD" and task_type == "zero-shot":
        return f"The texture of {c} bears a likeness to that of {ana} ."
    return f"a {c} similar to {ana}."


@pytest.mark.parametrize(("preset", "coder_name"), [("pets", "oxford-pet"), ("dtd", "DTD"), ("eurosat", "eurosat")])
def test_zero_shot_and_few_shot_banks_use_coders_wordings(preset: str, coder_name: str):
    cfg = PipelineConfig(preset=preset)
    for texts, task_type in ((cfg.texts, "zero-shot"), (cfg.fewshot.bank_texts(cfg.texts), "few-shot")):
        att = texts.att_template.format(c="cat", x="whiskers")
        ana = texts.ana_template.format(c="cat", x="lynx")
        assert att == _coder_att(coder_name, "cat", "whiskers", task_type), (preset, task_type)
        assert ana == _coder_ana(coder_name, "cat", "lynx", task_type), (preset, task_type)
    assert cfg.fewshot.bank_texts(cfg.texts).name_template == cfg.texts.name_template  # same name prompt in both


def test_eurosat_few_shot_class_names_are_coders_eurosat1():
    cfg = PipelineConfig(preset="eurosat")
    assert cfg.texts.classnames is None  # zero-shot: the dataset's own names
    names = cfg.fewshot.bank_texts(cfg.texts).classnames
    assert names == EUROSAT1
    dataset_names = ["annual crop land", "forest", "brushland or shrubland", "highway or road", "industrial buildings "
                     "or commercial buildings", "pasture land", "permanent crop land", "residential buildings or "
                     "homes or apartments", "river", "lake or sea"]  # fmt: skip
    assert text_classnames(names, dataset_names) == list(EUROSAT1)
    assert text_classnames(None, dataset_names) == dataset_names
    with pytest.raises(ValueError, match="one name per class"):
        text_classnames(names, dataset_names[:9])


def test_fewshot_texts_are_checked_and_change_the_bank_settings():
    with pytest.raises(ValueError, match="not texts settings"):
        FewShotConfig(texts={"att": "x"})
    fs = FewShotConfig(texts="att_template={c} has {x}")
    texts = fs.bank_texts(TextsConfig())
    assert texts.att_template == "{c} has {x}" and TextsConfig().att_template == "{c} which has {x}"
    assert texts.model_dump_json() != TextsConfig().model_dump_json()  # a bank input: a bank of its own
    assert FewShotConfig().bank_texts(TextsConfig()) == TextsConfig()
