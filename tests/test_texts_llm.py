"""LLM generator against a fake OpenAI-compatible server over real HTTP: parsing, retries, errors, cache, secrecy."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from fake_openai import API_KEY, FakeOpenAI, Reply, completion, error, make_generator, structured

from coderflow.tasks.texts.bank import build_bank
from coderflow.tasks.texts.generate import generate_texts
from coderflow.tasks.texts.llm import LLMGenerator
from coderflow.tasks.texts.llm_endpoint import LLMConfigError
from coderflow.tasks.texts.llm_prompts import synonym_request
from coderflow.tasks.texts.llm_replies import clean_items, item_problem, parse_items


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def make(server: FakeOpenAI, cache: Path, **kw) -> LLMGenerator:
    return make_generator(server, cache, **kw)


def assert_no_secret(cache: Path, *texts: str) -> None:
    for path in cache.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(encoding="utf-8"), path
    for text in texts:
        assert API_KEY not in text


def test_structured_answers_are_parsed_counted_and_cached(server, tmp_path):
    gen = make(server, tmp_path)
    out = gen.attributes(["tench", "goldfish"], 3)
    assert [len(x) for x in out] == [3, 3]
    assert out[0] != out[1]
    assert all(r["response_format"]["type"] == "json_schema" for r in server.requests)
    assert (gen.usage.calls, gen.usage.cache_hits, gen.usage.prompt_tokens, gen.usage.completion_tokens) == (
        2,
        0,
        20,
        10,
    )
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2
    record = json.loads(files[0].read_text())
    assert record["model"] == "fake-model" and record["mode"] == "structured" and len(record["items"]) == 3

    n_before = len(server.requests)
    again = make(server, tmp_path)
    assert again.attributes(["tench", "goldfish"], 3) == out
    assert len(server.requests) == n_before  # the re-run made no HTTP call
    assert (again.usage.calls, again.usage.cache_hits) == (0, 2)
    assert_no_secret(tmp_path)


def test_api_key_is_sent_but_not_part_of_the_cache_key(server, tmp_path):
    gen = make(server, tmp_path)
    other_key = LLMGenerator("fake-model", tmp_path, base_url=server.base_url, api_key="sk-another-key-000")
    assert gen.cache_key(synonym_request("cat", 3)) == other_key.cache_key(synonym_request("cat", 3))
    assert gen.cache_key(synonym_request("cat", 3)) != gen.cache_key(synonym_request("cat", 4))
    gen.synonyms(["cat"], 3)
    assert server.headers[0]["authorization"] == f"Bearer {API_KEY}"


def test_malformed_structured_json_falls_back_to_plain_completion(server, tmp_path):
    server.push(
        completion('{"synonyms": ["kitty", '), completion("Sure! Here they are:\n1. kitty\n2) house cat\n- moggy")
    )
    gen = make(server, tmp_path)
    assert gen.synonyms(["cat"], 5) == [["kitty", "house cat", "moggy"]]
    assert "response_format" in server.requests[0] and "response_format" not in server.requests[1]
    assert gen.usage.calls == 2 and gen.failures == []


def test_endpoint_without_structured_outputs_switches_to_plain_mode(server, tmp_path):
    server.push(error(400, "response_format json_schema is not supported"))
    server.responder = lambda req: completion('```json\n{"things": ["a dingo", "a coyote"]}\n```')
    gen = make(server, tmp_path, max_workers=1)
    assert gen.analogies(["husky", "beagle"], 2) == [["a dingo", "a coyote"], ["a dingo", "a coyote"]]
    assert [("response_format" in r) for r in server.requests] == [True, False, False]
    plain = server.requests[1]["messages"][1]["content"]  # the JSON shape in words, no copyable placeholder
    assert 'key "things" holds a list of short phrases' in plain and "<phrase>" not in plain
    assert "Reply with" not in server.requests[0]["messages"][1]["content"]  # structured: the schema says it


def test_reply_cut_at_max_tokens_keeps_its_complete_items(server, tmp_path):
    server.push(completion('{"synonyms": ["kitty", "moggy", "hou', finish_reason="length"))
    gen = make(server, tmp_path)
    assert gen.synonyms(["cat"], 5) == [["kitty", "moggy"]]
    assert gen.usage.calls == 1 and gen.usage.completion_tokens == 5


@pytest.mark.parametrize("kind", ["empty", "refusal"])
def test_empty_or_refused_replies_are_retried_then_recorded(server, tmp_path, kind):
    bad = completion("") if kind == "empty" else completion(refusal="I cannot help with that.")
    server.push(bad, bad)
    gen = make(server, tmp_path, content_retries=1)
    assert gen.synonyms(["cat"], 3) == [[]]
    assert len(server.requests) == 2
    assert gen.usage.failed == 1 and gen.failures[0]["subject"] == "cat"
    assert ("refused" in gen.failures[0]["problem"]) == (kind == "refusal")
    assert list(tmp_path.glob("*.failed.json")) and not [p for p in tmp_path.glob("*.json") if ".failed" not in p.name]
    server.push(completion('{"synonyms": ["kitty"]}'))  # a failure is not an answer: the next run asks again
    again = make(server, tmp_path)
    assert again.synonyms(["cat"], 3) == [["kitty"]]
    assert len(server.requests) == 3 and again.usage.cache_hits == 0 and again.usage.failed == 0
    assert make(server, tmp_path).synonyms(["cat"], 3) == [["kitty"]] and len(server.requests) == 3  # now cached


def test_429_honours_retry_after_then_succeeds(server, tmp_path):
    server.push(error(429, "Rate limit reached", "rate_limit_exceeded", headers={"retry-after": "0.3"}))
    gen = make(server, tmp_path, backoff=0.001)
    start = time.monotonic()
    assert gen.synonyms(["cat"], 3)[0]
    assert time.monotonic() - start >= 0.3
    assert gen.usage.calls == 2 and len(server.requests) == 2


def test_server_errors_are_retried_a_bounded_number_of_times(server, tmp_path):
    server.push(*[error(500, "boom")] * 3)
    gen = make(server, tmp_path, max_retries=2)
    assert gen.synonyms(["cat"], 3) == [[]]
    assert len(server.requests) == 3  # 1 try + 2 retries, then the request is recorded as failed
    assert "HTTP 500" in gen.failures[0]["problem"]
    server.push(error(503, "busy"))
    assert make(server, tmp_path).synonyms(["cat"], 3)[0]


def test_timeout_is_retried(server, tmp_path):
    server.push(Reply(200, completion('{"synonyms": ["late"]}').body, delay=1.0))
    gen = make(server, tmp_path, timeout=0.3)
    start = time.monotonic()
    out = gen.synonyms(["cat"], 3)[0]
    assert out and out != ["late"]
    assert 0.3 <= time.monotonic() - start < 1.0
    assert gen.usage.calls == 2
    assert gen.concurrency == 1  # make() asks for 2 in flight: a timeout halves that (the server is queueing)


def test_timeouts_lower_the_requests_in_flight(server, tmp_path):
    """With 4 in flight and a server that answers one at a time, requests time out: concurrency backs off, and the
    peak of concurrent requests the server sees drops to 1."""
    lock, state = threading.Lock(), {"now": 0, "peak_late": 0, "calls": 0}

    def one_at_a_time(request):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            late = state["calls"] > 8
            if late:
                state["peak_late"] = max(state["peak_late"], state["now"])
            crowded = state["now"] > 1
        time.sleep(0.35 if crowded else 0.05)  # a second request at once waits behind the first: too slow
        with lock:
            state["now"] -= 1
        return structured(request)

    server.responder = one_at_a_time
    gen = make(server, tmp_path, max_workers=4, timeout=0.3, max_retries=6, backoff=0.4, max_backoff=0.4)
    out = gen.attributes([f"class {i}" for i in range(12)], 1)
    assert gen.concurrency == 1 and all(out)
    assert state["peak_late"] == 1


def test_bad_api_key_raises_a_clear_error_without_the_key(server, tmp_path, caplog):
    secret = "sk-wrong-SECRET-key-9876543210"
    gen = LLMGenerator("fake-model", tmp_path, base_url=server.base_url, api_key=secret, max_retries=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(LLMConfigError, match="OPENAI_API_KEY") as info:
        gen.synonyms(["cat"], 3)
    assert "401" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value) and secret not in caplog.text
    assert len(server.requests) == 1  # not retried


def test_unknown_model_raises_a_clear_error(server, tmp_path):
    gen = LLMGenerator("no-such-model", tmp_path, base_url=server.base_url, api_key=API_KEY)
    with pytest.raises(LLMConfigError, match=r"no-such-model.*check the model name"):
        gen.attributes(["cat"], 3)


def test_server_message_echoing_the_key_is_redacted(server, tmp_path):
    server.push(error(404, f"unknown model for key {API_KEY}"))
    with pytest.raises(LLMConfigError) as info:
        make(server, tmp_path).attributes(["cat"], 3)
    assert API_KEY not in str(info.value) and "***" in str(info.value)


def test_secret_stays_out_of_logs_and_cache(server, tmp_path, caplog):
    server.push(error(429, "slow down", headers={"retry-after": "0"}), completion(""))
    with caplog.at_level(logging.DEBUG):
        make(server, tmp_path).attributes(["cat", "dog"], 2)
    assert_no_secret(tmp_path, caplog.text)


def test_missing_key_and_env_configuration(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        LLMGenerator("fake-model", tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    gen = LLMGenerator("fake-model", tmp_path, backoff=0.01)
    assert gen.synonyms(["cat"], 2)[0]


def test_concurrency_is_bounded_by_max_workers(server, tmp_path):
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def slow(request):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return structured(request)

    server.responder = slow
    out = make(server, tmp_path, max_workers=3, timeout=5).attributes([f"class {i}" for i in range(7)], 2)
    assert [len(x) for x in out] == [2] * 7
    assert state["peak"] == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"attributes": ["red fins", "scales"]}', ["red fins", "scales"]),
        ('Here you go:\n```json\n{"attributes": ["red fins"]}\n```\nEnjoy!', ["red fins"]),
        ('["red fins", "scales"]', ["red fins", "scales"]),
        ('{"answer": [{"text": "red fins"}, {"text": "scales"}]}', ["red fins", "scales"]),
        ('Attributes:\n1. red fins.\n2) "scales"\n* a long body', ["red fins", "scales", "a long body"]),
        ("red fins\nscales", ["red fins", "scales"]),
        ("", []),
        ('{"attributes": "not a list"}\n- red fins', ["red fins"]),
        ('{"attributes": ["...", "red fins", "sca', ["red fins"]),
        ('```json\n[{"name": "red fins"}, {"name": "sc', ["red fins"]),
    ],
)
def test_tolerant_parsing(text, expected):
    assert clean_items(parse_items(text, "attributes"), 10) == expected


def test_clean_items_dedupes_and_limits():
    dropped: dict[str, int] = {}
    items = ["A lynx.", "a lynx", "  ", "x" * 500, "<phrase>", "'fox'", "dog"]
    assert clean_items(items, 2, dropped=dropped) == ["A lynx", "fox"]
    assert dropped == {"duplicate": 1, "empty": 1, "longer than a phrase": 1, "placeholder": 1}


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("a long curved tail", None),  # a real phrase may share words with the example
        ("a wolf-like snout", None),
        ("a long curved beak", "copies the prompt's example"),
        ("solar panel which has solar panel which has a long curved beak", "copies the prompt's example"),
        ("pointed ears and a shorter tail", "copies the prompt's example"),
        ("circle which has four corners", "restates the class"),  # the reply echoes "{c} which has"
        ("the circle's round edge", None),
        ("circle of stones", "restates the class"),
        ("square which has four corners", "restates the class"),
        ("a shorter tail", "copies the prompt's example"),
        ("https://example.org/cross", "url"),
        ("see www.example.com", "url"),
        ("square_square_square", "repeated words or underscores"),
        ("dots dots", "repeated words or underscores"),
        ("A wolf is a creature that is often depicted in stories. It howls.", "longer than a phrase"),
        ("a circle", "restates the class"),
        ("Circle", "restates the class"),
        ("a round shape", None),
    ],
)
def test_quality_filter_reasons(item, reason):
    """The garbage a small local model writes (copied examples, URLs, repetitions, sentences, the class itself)."""
    assert item_problem(item, "circle") == reason


def test_generate_texts_through_the_llm(server, tmp_path):
    classes = ["tench", "goldfish", "golden retriever"]
    gen = make(server, tmp_path)
    texts, report = generate_texts(classes, ["a photo of a {c}."], gen, pairs=[(0, 1)], n_att=2, n_ana=2)
    kinds = {t.text_type for t in texts}
    assert kinds == {"name", "template", "att", "ana", "syno", "ovo"}
    assert {(t.class_index, t.other_class_index) for t in texts if t.text_type == "ovo"} == {(0, 1), (1, 0)}
    assert all(t.source == "llm:fake-model" for t in texts if t.text_type not in ("name", "template"))
    bank = build_bank(texts, classes)
    assert bank.num_rows == len(texts)
    assert report.generator["usage"]["calls"] == len(server.requests) == 3 + 3 + 3 + 2
    assert report.generator["usage"]["prompt_tokens"] == 10 * len(server.requests)


def test_concurrency_follows_the_servers_slots(server, tmp_path):
    """llama.cpp's GET /props says how many requests it runs at once; more in flight would only queue and time out."""
    from coderflow.tasks.texts.llm_endpoint import server_slots

    assert server_slots(server.base_url) is None and make(server, tmp_path, max_workers=None).max_workers == 4
    server.slots = 3
    assert server_slots(server.base_url) == 3
    assert make(server, tmp_path, max_workers=None).max_workers == 3
    assert make(server, tmp_path, max_workers=1).max_workers == 1  # an explicit setting wins


@pytest.mark.parametrize("command", ["run", "texts", "fewshot"])
def test_llm_flags_reach_the_config_of_every_command_that_writes_texts(command, tmp_path):
    from cli_runner import run_cli

    out = run_cli([command, "--texts.llm.max-tokens", "3", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "texts.llm.max_tokens" in out.output
    out = run_cli([command, "--texts.llm.timeout", "0", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "texts.llm.timeout" in out.output
    out = run_cli([command, "--texts.llm.max-concurrency", "0", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "texts.llm.max_concurrency" in out.output


def test_each_batch_of_requests_logs_a_summary_line(server, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="coderflow.tasks.texts.llm"):
        make(server, tmp_path).attributes(["cat", "dog"], 2)
        make(server, tmp_path).attributes(["cat", "dog"], 2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LLM att:")]
    assert lines[0].startswith("LLM att: 2 requests, 0 from the cache, 0 failed,")
    assert lines[1].startswith("LLM att: 2 requests, 2 from the cache, 0 failed, 0 tokens")


def test_classes_without_look_alikes_are_told_why(tmp_path):
    """The warning for classes left without `ana` texts names, per class, what the filter dropped and why."""
    from fake_openai import FakeOpenAI

    from coderflow.tasks.texts.bank import bank_summary, why_without

    def responder(request):
        prompt = request["messages"][-1]["content"]
        if "look similar to a circle" in prompt:
            return structured(request, ["square", "triangle"])  # other classes: never look-alikes
        return structured(request, [] if "look similar to" in prompt else None)

    classes = ["circle", "square", "triangle"]
    with FakeOpenAI(responder) as server:
        gen = make(server, tmp_path)
        texts, report = generate_texts(classes, ["a photo of a {c}."], gen, types=("ana",), n_ana=2, ana_retries=0)
    full = {"dropped": report.dropped, "generator": report.generator}
    missing = bank_summary(build_bank(texts, classes), full)["classes_without"]["ana"]
    assert missing == classes
    why = why_without("ana", missing, classes, full)
    assert why.startswith("circle: 2 dropped as is a class of the dataset; square: no candidate came back"), why
