"""LLM failure modes not covered by test_texts_llm.py: wrong-schema and shapeless replies, a server that never
answers, a damaged cache file, and the API key absent from every log line (DEBUG, openai/httpx loggers included),
exception, cache file and report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from fake_openai import API_KEY, FakeOpenAI, Reply, completion, error, make_generator

from coderflow.tasks.texts.llm import LLMConfigError, LLMGenerator, synonym_request


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


def make(server: FakeOpenAI, cache: Path, **kw) -> LLMGenerator:
    return make_generator(server, cache, **({"max_workers": 1} | kw))


def test_wrong_key_in_the_reply_is_read_tolerantly(server, tmp_path):
    """{"colors": [...]} for a synonyms request fails schema validation, then the plain retry keeps its only list."""
    server.push(completion('{"colors": ["kitty", "moggy"]}'), completion('{"colors": ["kitty", "moggy"]}'))
    gen = make(server, tmp_path)
    assert gen.synonyms(["cat"], 3) == [["kitty", "moggy"]]
    assert [("response_format" in r) for r in server.requests] == [True, False]
    assert gen.failures == []


def test_wrong_types_in_the_reply_are_recorded_as_failed(server, tmp_path):
    """{"synonyms": "kitty"} (a string, not a list) gives no items: retried once, recorded, asked again next run."""
    server.push(*[completion('{"synonyms": "kitty"}')] * 4)
    gen = make(server, tmp_path, content_retries=1)
    assert gen.synonyms(["cat"], 3) == [[]]
    assert len(server.requests) == 4  # (structured, plain) x (1 try + 1 content retry)
    assert gen.usage.failed == 1 and gen.failures[0]["subject"] == "cat"
    server.push(*[completion('{"synonyms": "kitty"}')] * 4)
    assert make(server, tmp_path).synonyms(["cat"], 3) == [[]] and len(server.requests) == 8  # not cached


def test_reply_without_choices_is_recorded(server, tmp_path):
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "fake-model", "choices": []}
    server.push(*[Reply(200, body)] * 2)
    gen = make(server, tmp_path, content_retries=1)
    assert gen.synonyms(["cat"], 3) == [[]]
    assert gen.failures[0]["problem"] == "no choices in reply"


@pytest.mark.parametrize("body", ["<html>502 Bad Gateway</html>", {}, [1, 2], {"choices": None}])
def test_reply_that_is_not_a_chat_completion_is_retried_then_recorded_uncached(server, tmp_path, body):
    """A proxy's HTML page or JSON of another shape: transient like a 5xx (retried), recorded, not cached."""
    server.push(*[Reply(200, body)] * 3)
    gen = make(server, tmp_path, max_retries=2)
    assert gen.synonyms(["cat"], 3) == [[]]
    assert len(server.requests) == 3
    assert "not a chat completion after 3 attempts" in gen.failures[0]["problem"]
    assert list(tmp_path.glob("*.json")) == []  # not cached: the next run asks again and succeeds
    assert make(server, tmp_path).synonyms(["cat"], 3)[0]


def test_one_bad_body_then_a_good_one(server, tmp_path):
    server.push(Reply(200, "<html>oops</html>"))
    gen = make(server, tmp_path)
    assert gen.synonyms(["cat"], 3)[0] and gen.usage.calls == 2 and gen.failures == []


def test_a_server_that_never_answers_costs_bounded_time(server, tmp_path):
    server.responder = lambda req: Reply(200, completion('{"synonyms": ["late"]}').body, delay=3.0)
    gen = make(server, tmp_path, timeout=0.2, max_retries=1, backoff=0.01, max_workers=2)
    start = time.monotonic()
    assert gen.synonyms(["cat", "dog"], 3) == [[], []]
    assert time.monotonic() - start < 2.0  # 2 attempts x 0.2 s per request, two requests in parallel
    assert all("APITimeoutError after 2 attempts" in f["problem"] for f in gen.failures)
    assert list(tmp_path.glob("*.json")) == []


def test_damaged_cache_file_is_asked_again(server, tmp_path):
    gen = make(server, tmp_path)
    path = tmp_path / f"{gen.cache_key(synonym_request('cat', 3))}.json"
    for damaged in ('{"items": ["half', '["not", "a", "record"]', '{"no_items": 1}', ""):
        path.write_text(damaged)
        n = len(server.requests)
        assert make(server, tmp_path).synonyms(["cat"], 3)[0]
        assert len(server.requests) == n + 1
        assert json.loads(path.read_text())["items"]  # replaced by a good record


def test_key_never_logged_at_debug_nor_in_errors_cache_or_report(server, tmp_path, caplog, monkeypatch):
    """Every failure path at DEBUG level, with openai/httpx/httpcore loggers at DEBUG too."""
    monkeypatch.setenv("OPENAI_LOG", "debug")
    for name in ("openai", "httpx", "httpcore"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    server.push(
        error(429, "slow down", headers={"retry-after": "0"}),
        error(500, "boom"),
        Reply(200, "<html>bad gateway</html>"),
        completion('{"synonyms": ["kitty", '),
        completion("1. kitty"),
        completion(refusal=f"no, {API_KEY}"),
        completion(""),
    )
    messages: list[str] = []
    with caplog.at_level(logging.DEBUG):
        gen = make(server, tmp_path, max_retries=3)
        gen.synonyms(["cat", "dog", "cow"], 2)
        server.push(error(404, f"unknown model for key {API_KEY}"))
        with pytest.raises(LLMConfigError) as info:
            gen.attributes(["emu"], 2)
        messages += [str(info.value), repr(info.value)]
        bad = LLMGenerator("fake-model", tmp_path, base_url=server.base_url, api_key=API_KEY + "-wrong", max_retries=0)
        with pytest.raises(LLMConfigError) as info:
            bad.attributes(["yak"], 2)
        messages += [str(info.value), repr(info.value)]
    assert "HTTP Request" in caplog.text or "Request options" in caplog.text  # the client loggers did log
    texts = [caplog.text, *messages, json.dumps(gen.report()), *(p.read_text() for p in tmp_path.rglob("*.json"))]
    for text in texts:
        assert API_KEY not in text
    assert len(server.requests) >= 8


def test_credentials_in_the_base_url_stay_out_of_messages(server, tmp_path):
    url = server.base_url.replace("http://", "http://user:URL-SECRET-PW@")
    gen = LLMGenerator("fake-model", tmp_path, base_url=url, api_key=API_KEY, max_retries=0)
    assert "URL-SECRET-PW" not in gen.base_url and gen.base_url.startswith("http://***@127.0.0.1:")
    with pytest.raises(LLMConfigError) as info:  # httpx sends the URL's user:password instead of the key: 401
        gen.synonyms(["cat"], 2)
    assert "URL-SECRET-PW" not in str(info.value)


@pytest.mark.parametrize("header", [{"retry-after": "-1"}, {"retry-after": "nan"}, {"retry-after-ms": "-5"}])
def test_odd_retry_after_values_are_waited_sanely(tmp_path, header):
    with FakeOpenAI() as server:
        server.push(error(429, "slow down", headers=header))
        gen = make_generator(server, tmp_path, backoff=0.001)
        start = time.monotonic()
        assert gen.synonyms(["cat"], 3)[0]  # retried, then answered
        assert time.monotonic() - start < 5 and len(server.requests) == 2


def test_a_body_that_is_not_utf8_is_retried_then_recorded(tmp_path):
    with FakeOpenAI() as server:
        server.push(Reply(200, b"\xff\xfe{\x00bad"), Reply(200, b"\x80\x81"))
        gen = make_generator(server, tmp_path, backoff=0.001, max_retries=1)
        assert gen.synonyms(["cat"], 3) == [[]]  # recorded as a failed request, the stage goes on
        assert len(server.requests) == 2 and "not a chat completion" in gen.failures[0]["problem"]


def test_a_huge_reply_is_capped_in_the_cache_and_the_key_never_stored(tmp_path):
    filler = "x" * 500_000
    body = json.dumps({"synonyms": ["kitty", f"puss {API_KEY}"], "note": filler})
    with FakeOpenAI() as server:
        server.push(completion(body))
        gen = make_generator(server, tmp_path)
        got = gen.synonyms(["cat"], 3)[0]
    assert "kitty" in got and all(API_KEY not in x for x in got)
    (cached,) = [p for p in tmp_path.glob("*.json") if ".failed" not in p.name]
    text = cached.read_text()
    assert len(text) < 50_000 and API_KEY not in text
    assert json.loads(text)["raw_truncated_from"] > 500_000


def test_a_server_trickling_bytes_hits_the_total_deadline(tmp_path):
    """httpx's timeouts are per socket read, so one byte every 0.05 s never trips them; each request has a total
    deadline instead (here 0.5 s), so 1 try + 1 retry end in about a second, not in minutes."""
    with FakeOpenAI() as server:
        slow = completion('{"synonyms": ["kitty"]}')
        slow.trickle = 0.05
        server.push(slow, slow)
        gen = make_generator(server, tmp_path, timeout=0.5, max_retries=1, backoff=0.01)
        start = time.monotonic()
        assert gen.synonyms(["cat"], 3) == [[]]
        assert time.monotonic() - start < 4 and len(server.requests) == 2
        assert "timeout" in gen.failures[0]["problem"].lower() or "Timeout" in gen.failures[0]["problem"]
