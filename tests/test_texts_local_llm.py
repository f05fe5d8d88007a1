"""A real small LLM (SmolLM2-135M via xllamacpp's OpenAI-compatible server) through the LLM generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coderflow.tasks.texts.bank import build_bank
from coderflow.tasks.texts.generate import ANA_FORMAT, ATT_FORMAT, generate_texts
from coderflow.tasks.texts.llm import LLMGenerator

GGUF = Path(os.environ.get("CODERFLOW_TEST_GGUF", Path(__file__).parents[1] / ".cache" / "models" / "smollm2.gguf"))
xllamacpp = pytest.importorskip("xllamacpp", reason="pip install xllamacpp to run the local-LLM test")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GGUF.is_file(), reason=f"no GGUF at {GGUF}: run scripts/fetch_test_llm.sh"),
]


@pytest.fixture(scope="module")
def llama_url():
    params = xllamacpp.CommonParams()
    params.model.path = str(GGUF)
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # a free port; the server reports the one it took
    params.n_parallel = 2
    params.n_ctx = 2048
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    server = xllamacpp.Server(params)  # starts serving HTTP at once
    yield server.listening_address + "/v1"
    del server  # stops the server


def test_concurrency_defaults_to_the_real_servers_slots(llama_url, tmp_path):
    from coderflow.tasks.texts.llm_endpoint import server_slots

    assert server_slots(llama_url) == 2  # n_parallel, as llama.cpp's /props reports it
    assert LLMGenerator("smollm2", tmp_path, base_url=llama_url).max_workers == 2


def test_small_llm_text_bank_end_to_end(llama_url, tmp_path):
    classes = ["tench", "goldfish", "golden retriever"]

    def generator() -> LLMGenerator:
        return LLMGenerator(
            "smollm2", tmp_path, base_url=llama_url, max_workers=2, timeout=60, max_tokens=32, content_retries=0
        )

    gen = generator()
    texts, report = generate_texts(
        classes, ["a photo of a {c}."], gen, types=("att", "ana"), n_att=3, n_ana=3, ana_retries=0
    )
    by_type = {k: [t for t in texts if t.text_type == k] for k in ("name", "att", "ana")}
    assert len(by_type["name"]) == 3
    # SmolLM2-135M at temperature 0 mostly echoes the prompt's example ("a long curved beak" for a tench): the filter
    # drops those (the request counts as failed and is asked again next run); what passes is a usable phrase
    assert by_type["ana"], report
    assert not any("long curved beak" in t.text for t in by_type["att"]), by_type["att"]
    assert len(by_type["att"]) < 3 * 3 or not gen.usage.failed
    for t in by_type["att"] + by_type["ana"]:
        fmt = ATT_FORMAT if t.text_type == "att" else ANA_FORMAT
        prefix = fmt.split("{x}")[0].format(c=classes[t.class_index])
        suffix = fmt.split("{x}")[1]
        assert t.text.startswith(prefix) and len(t.text) > len(prefix) + 1 and t.text.endswith(suffix)
    bank = build_bank(texts, classes)
    assert bank.num_rows >= 5
    assert gen.usage.calls >= 6 and gen.usage.completion_tokens > 0

    again = generator()
    texts2, _ = generate_texts(
        classes, ["a photo of a {c}."], again, types=("att", "ana"), n_att=3, n_ana=3, ana_retries=0
    )
    # answers come from the cache; requests that gave nothing are asked again (a failure is not an answer)
    assert again.usage.cache_hits == 6 - gen.usage.failed
    assert again.usage.calls >= gen.usage.failed and (again.usage.calls > 0) == (gen.usage.failed > 0)
    assert {t.text for t in texts2} >= {t.text for t in texts}


def test_whole_bank_with_the_default_settings(llama_url, tmp_path):
    """Defaults as a user gets them (160 tokens, 120 s, concurrency from /props): every type of a small bank
    completes against the real server, garbage is filtered with reasons, and failures are not cached."""
    import time

    from coderflow.tasks.texts.bank import bank_summary

    classes = ["tench", "goldfish"]
    gen = LLMGenerator("smollm2", tmp_path, base_url=llama_url)
    start = time.perf_counter()
    texts, report = generate_texts(classes, ["a photo of a {c}."], gen, pairs=[(0, 1)], n_att=3, n_ana=3, ana_retries=0)
    seconds = time.perf_counter() - start
    summary = bank_summary(build_bank(texts, classes), report.to_dict() | {"generator": gen.report()})
    asked = {k: v["requests"] for k, v in summary["types"].items() if v["requests"]}
    assert asked == {"att": 2, "ana": 2, "syno": 2, "ovo": 2}, summary["types"]
    assert seconds < 300 and gen.max_workers == 2
    assert all(v["received"] >= v["kept"] or k in ("ovo",) for k, v in summary["types"].items() if v["requests"])
    assert not [
        p for p in tmp_path.glob("*.json") if ".failed" not in p.name and not json.loads(p.read_text())["items"]
    ]
