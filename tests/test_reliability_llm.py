"""LLM failure modes not covered by test_texts_llm.py: wrong-schema and shapeless replies, a server that never
answers, a damaged cache file, and the API key absent from every log line (DEBUG, openai/httpx loggers included),
exception, cache file and report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from fake_openai import API_KEY, FakeOpenAI, Reply, completion, error, make_generator

from coderflow.tasks.texts.llm import LLMGenerator
from coderflow.tasks.texts.llm_endpoint import LLMConfigError
from coderflow.tasks.texts.llm_prompts import synonym_request


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


def _finishes(fn, seconds: float):
    """fn() run in a thread: its result, or a test failure (not a hung test) when it runs past `seconds`."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return out[0]


def test_a_trickling_props_probe_hits_the_total_deadline(tmp_path):
    """llama.cpp's GET /props asked for the server's slots: a server trickling its body (one byte every 0.05 s, for
    over an hour) costs one request deadline (0.5 s), then the default concurrency is used."""
    with FakeOpenAI() as server:
        server.props = Reply(200, b" " * 100_000, trickle=0.05)
        start = time.monotonic()
        gen = _finishes(lambda: make_generator(server, tmp_path, timeout=0.5, max_workers=None), 10)
        assert time.monotonic() - start < 3 and gen.max_workers == 4


DEEP = "[" * 100_000  # json.loads raises RecursionError on it, not a JSONDecodeError


@pytest.mark.parametrize(
    "replies",
    [
        [Reply(200, DEEP)] * 3,  # the HTTP body
        [completion(DEEP)] * 4,  # the message content: structured, then plain
        [completion('{"synonyms": ' + "[" * 100_000 + '"kitty"' + "]" * 100_000 + "}")] * 4,
    ],
    ids=["body", "content", "content-closed"],
)
def test_a_deeply_nested_reply_is_a_failed_request(tmp_path, replies):
    with FakeOpenAI() as server:
        server.push(*replies)
        gen = make_generator(server, tmp_path, max_retries=2, content_retries=1, max_workers=1)
        assert gen.synonyms(["cat"], 3) == [[]]  # recorded as a failed request, the stage goes on
        assert gen.usage.failed == 1 and len(server.requests) == len(replies)
        assert gen.synonyms(["dog"], 3)[0]  # the next request is answered


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_refused_in_one_line_before_any_retry(tmp_path, status):
    """Following a redirect could send the API key to another host: it is refused at once, naming both addresses."""
    with FakeOpenAI() as server:
        elsewhere = "http://attacker.example:9/v1/chat/completions?token=abc"
        server.responder = lambda req: Reply(status, "", {"location": elsewhere})
        gen = make_generator(server, tmp_path, max_retries=3)
        with pytest.raises(LLMConfigError) as info:
            gen.synonyms(["cat", "dog", "cow", "emu", "yak", "owl"], 3)
    message = str(info.value)
    assert f"HTTP {status}" in message and server.base_url in message and "attacker.example:9" in message
    assert "token=abc" not in message and "set --texts.llm.base_url to the final address" in message
    subjects = [r["messages"][-1]["content"] for r in server.requests]
    # no request asked twice; at most one per worker (2) was in flight when the first refusal came
    assert len(subjects) == len(set(subjects)) <= 2 * 2


# the same faults met through `coderflow texts` ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_workdir(prefect_server, tmp_path_factory) -> Path:
    """An ingested demo dataset (10 classes, one image each): `coderflow texts` asks one request per class."""
    from coderflow.config import DatasetConfig
    from coderflow.flows.pipeline import ingest_dataset

    workdir = tmp_path_factory.mktemp("llm-cli") / "w"
    ingest_dataset(DatasetConfig(demo_images_per_class=1, samples_per_shard=10), str(workdir))
    return workdir


def _texts_args(workdir: Path, server: FakeOpenAI, *extra: str) -> list[str]:
    args = ["texts", "--workdir", str(workdir), "--generator", "llm", "--texts.types", "name,att"]
    return [*args, "--texts.llm.model", "fake-model", "--texts.llm.base-url", server.base_url, *extra]


@pytest.mark.flow
@pytest.mark.slow
def test_cli_a_trickling_props_endpoint_cannot_hang_the_texts_stage(demo_workdir, tmp_path):
    """`coderflow texts --texts.llm.timeout 3` against a server whose GET /props sends a byte every second, forever."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    with FakeOpenAI() as server:
        server.props = Reply(200, b" " * 100_000, trickle=1.0)
        workdir = tmp_path / "w"
        shutil.copytree(demo_workdir, workdir)
        cli = str(Path(sys.executable).with_name("coderflow"))
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        args = _texts_args(workdir, server, "--texts.llm.timeout", "3")
        try:
            done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"coderflow texts still running after 240 s: {(exc.stderr or b'')[-2000:]!r}")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert len(server.requests) == 10  # the stage went on with the default concurrency


@pytest.mark.flow
@pytest.mark.slow
def test_cli_deeply_nested_replies_are_failed_requests(demo_workdir, tmp_path):
    """Replies nested 100,000 deep (in the body or the message content) are failed requests: the stage finishes,
    the bank keeps its name prompts, and the report lists the failures."""
    with FakeOpenAI() as server:
        server.responder = lambda req: Reply(200, DEEP) if "response_format" in req else completion(DEEP)
        workdir = tmp_path / "w"
        shutil.copytree(demo_workdir, workdir)
        args = _texts_args(workdir, server, "--texts.llm.max-retries", "1", "--texts.llm.max-concurrency", "2")
        done = run_cli(args, env={"OPENAI_API_KEY": API_KEY})
        assert done.exit_code == 0, done.output
        assert "RecursionError" not in done.output and "Traceback" not in done.output
    (report,) = (workdir / "texts").glob("*.report.json")
    failures = json.loads(report.read_text())["generator"]["failures"]
    assert len(failures) == 10 and all(f["kind"] == "att" for f in failures)


@pytest.mark.flow
@pytest.mark.slow
def test_cli_a_redirect_is_one_line_before_any_retry(demo_workdir, tmp_path):
    with FakeOpenAI() as server:
        server.responder = lambda req: Reply(307, "", {"location": "https://other.example/v1/chat/completions"})
        workdir = tmp_path / "w"
        shutil.copytree(demo_workdir, workdir)
        done = run_cli(_texts_args(workdir, server), env={"OPENAI_API_KEY": API_KEY})
    lines = done.output.strip().splitlines()
    assert done.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.output
    assert server.base_url in lines[0] and "https://other.example/v1/chat/completions" in lines[0]
    assert "set --texts.llm.base_url to the final address" in lines[0]
    subjects = [r["messages"][-1]["content"] for r in server.requests]
    assert len(subjects) == len(set(subjects)) < 10  # none asked twice, the stage stopped at the first refusal
