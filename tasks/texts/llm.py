"""LLM text generator over any OpenAI-compatible endpoint: structured outputs, tolerant parsing, retries, disk cache."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import tenacity
from pydantic import BaseModel, ValidationError

from coderflow.console import printable
from coderflow.interrupt import request_stop, stop_token
from coderflow.progress import stage_progress
from coderflow.storage.atomic import write_text
from coderflow.storage.layout import storage_path
from coderflow.tasks import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

SYSTEM_PROMPT = (
    "You help build an image classifier. You write short, concrete, visual phrases. "
    "Answer only with the JSON object that is asked for."
)
MAX_ITEM_CHARS = 120


class LLMConfigError(ConfigError):
    """The endpoint rejected the configuration (bad API key, unknown model): retrying cannot help."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived: a thread about to send a request, or to retry one, stops instead."""


# response models (structured outputs), one per text type -------------------------------------------------
class Attributes(BaseModel):
    attributes: list[str]


class Lookalikes(BaseModel):
    things: list[str]


class Synonyms(BaseModel):
    synonyms: list[str]


class Differences(BaseModel):
    differences: list[str]


@dataclass
class Usage:
    """Requests sent, replies served from the cache, tokens spent and requests that gave nothing."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Request:
    kind: str
    subject: str
    response_model: type[BaseModel]
    prompt: str
    n: int

    @property
    def field(self) -> str:
        return next(iter(self.response_model.model_fields))

    def messages(self, structured: bool = True) -> list[dict[str, str]]:
        """The chat messages; a plain-mode request says the JSON shape in words (a literal example with placeholders
        gets copied by small models), a structured one needs no hint (the schema travels with it)."""
        content = self.prompt
        if not structured:
            content += (
                f' Reply with a JSON object whose key "{self.field}" holds a list of short phrases, nothing else.'
            )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


@dataclass
class _Reply:
    items: list[str]
    mode: str
    raw: str = ""
    problem: str = ""
    usage: dict[str, int] = field(default_factory=dict)


# tolerant parsing ----------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?')  # a JSON string, and the colon when it is a key
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+\s*[.):]|\(\d+\)|[a-z][.)])\s+(.+)$")


def _items_from_json(data: Any, key: str) -> list[str] | None:
    if isinstance(data, dict):
        value = data.get(key)
        if not isinstance(value, list):
            value = next((v for v in data.values() if isinstance(v, list)), None)
        return None if value is None else _items_from_json(value, key)
    if isinstance(data, list):
        out = []
        for item in data:
            if isinstance(item, dict):
                item = next((v for v in item.values() if isinstance(v, str)), None)
            if isinstance(item, str | int | float) and not isinstance(item, bool):
                out.append(str(item))
        return out
    return None


def _json_spans(text: str) -> list[str]:
    spans = [*_FENCE.findall(text), text]
    for opener, closer in ("{}", "[]"):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            spans.append(text[start : end + 1])
    return spans


def parse_items(text: str | None, key: str = "items") -> list[str]:
    """Phrases from a free-form reply: a JSON object or list (in code fences or not), else bullet/numbered lines,
    else the non-empty lines."""
    text = (text or "").strip()
    if not text:
        return []
    for span in _json_spans(text):
        try:
            items = _items_from_json(json.loads(span), key)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            continue
        if items is not None:
            return items
    body = (_FENCE.findall(text + "```") or [text])[0].strip() if "```" in text else text
    cut_short = body.count("{") + body.count("[") > body.count("}") + body.count("]")
    if body.startswith(("{", "[")) and cut_short:  # JSON cut at the length limit: keep its complete strings
        return [json.loads(f'"{s}"') for s, colon in _STRING.findall(body) if not colon]
    lines = [ln for ln in text.replace("```", "\n").splitlines() if ln.strip()]
    bullets = [m.group(1) for m in map(_BULLET.match, lines) if m]
    if bullets:
        return bullets
    return [ln for ln in lines if not ln.rstrip().endswith(":") and not ln.strip().startswith(("{", "}", "[", "]"))]


# the examples the prompts give: a reply that copies one says nothing about the class
PROMPT_EXAMPLES = frozenset(
    {"a long curved beak", "long curved beak", "a wolf", "wolf", "a shorter tail", "shorter tail"}
)
# a longer phrase holding one of the multi-word examples copies it too ("... which has a long curved beak")
_EXAMPLE_INSIDE = re.compile(r"\b(?:long curved beak|shorter tail)\b", re.I)
MAX_ITEM_WORDS = 12
_URL = re.compile(r"https?://|www\.|\.(?:com|org|net)\b", re.I)
_REPEAT = re.compile(r"_{2,}|(?<![a-z])([a-z]+)(?:[\s_]+\1)+(?![a-z])", re.I)


def item_problem(text: str, subject: str = "") -> str | None:
    """Why a cleaned phrase is not kept (a reason counted in the bank's report), or None when it is a phrase."""
    low = text.lower()
    subjects = {" ".join(s.lower().split()) for s in subject.split("|") if s.strip()}
    if not text:
        return "empty"
    if printable(text) != text:  # ESC, C1 or bidi controls: a terminal showing the text later would act on them
        return "control characters"
    if text.startswith("<") and text.endswith(">"):
        return "placeholder"
    if low in PROMPT_EXAMPLES or _EXAMPLE_INSIDE.search(text):
        return "copies the prompt's example"
    if _URL.search(text):
        return "url"
    if _REPEAT.search(text):
        return "repeated words or underscores"
    if len(text) > MAX_ITEM_CHARS or len(text.split()) > MAX_ITEM_WORDS or ". " in text:
        return "longer than a phrase"
    bare = low.removeprefix("a ").removeprefix("an ").removeprefix("the ")
    if low in subjects or bare in subjects or any(bare.startswith(s + " ") for s in subjects) or " which has " in low:
        return "restates the class"  # the class itself, or a phrase opening with it / echoing "{c} which has"
    return None


def clean_items(items: Sequence[str], n: int, subject: str = "", dropped: dict[str, int] | None = None) -> list[str]:
    """Strip quotes, list markers and end punctuation; drop what is not a usable phrase (see item_problem) and
    repeats, counting the reasons in `dropped`; keep n."""
    out: dict[str, str] = {}
    for item in items:
        m = _BULLET.match(item)
        text = " ".join((m.group(1) if m else item).split()).strip(" \"'`*.,;:")
        problem = item_problem(text, subject) or ("duplicate" if text.lower() in out else None)
        if problem is None:
            out[text.lower()] = text
        elif dropped is not None:
            dropped[problem] = dropped.get(problem, 0) + 1
    return list(out.values())[:n]


# requests ------------------------------------------------------------------------------------------------
def attribute_request(classname: str, n: int) -> Request:
    prompt = (
        f"List {n} distinct visual attributes that identify a {classname} in a photo. Each is a short noun phrase "
        f"that completes the sentence '{classname} which has ...', for example 'a long curved beak'."
    )
    return Request("att", classname, Attributes, prompt, n)


def analogy_request(classname: str, n: int, exclude: Sequence[str] = ()) -> Request:
    prompt = (
        f"List {n} other things (animals, objects, plants or scenes) that look similar to a {classname} in a photo "
        f"but are not a {classname}. Each is a short noun phrase, for example 'a wolf'."
    )
    if exclude:
        prompt += f" Do not list any of: {', '.join(sorted(set(exclude)))}."
    return Request("ana", classname, Lookalikes, prompt, n)


def synonym_request(classname: str, n: int) -> Request:
    prompt = (
        f"List up to {n} synonyms or other common names for '{classname}' that name exactly the same thing. "
        f"Each is a word or a short phrase, not '{classname}' itself."
    )
    return Request("syno", classname, Synonyms, prompt, n)


def difference_request(a: str, b: str, n: int) -> Request:
    prompt = (
        f"List {n} short visual differences that tell a {a} apart from a {b} in a photo. Each is a short noun "
        f"phrase that completes the sentence 'a {a} which, unlike a {b}, has ...', for example 'a shorter tail'."
    )
    return Request("ovo", f"{a} | {b}", Differences, prompt, n)


def _retry_after(error: openai.APIStatusError) -> float | None:
    headers = error.response.headers
    try:
        if headers.get("retry-after-ms"):
            seconds = float(headers["retry-after-ms"]) / 1000
            return max(0.0, seconds) if math.isfinite(seconds) else None
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None  # '-1' waits 0 s, 'nan' our own back-off


MAX_RAW_CHARS = 20_000  # the reply text kept in the cache per request (the phrases are short; a reply is ~1 KB)


class _DeadlineStream(httpx.SyncByteStream):
    """A response body that raises httpx.ReadTimeout once the request's total deadline has passed."""

    def __init__(self, inner: httpx.SyncByteStream, deadline: float, request: httpx.Request) -> None:
        self._inner, self._deadline, self._request = inner, deadline, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout("the reply took longer than the request's total timeout", request=self._request)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's timeouts bound each socket operation, so a server sending one byte a second never times out: this
    transport gives every request a total deadline of `seconds` (connecting, waiting and reading the body)."""

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.seconds
        response = super().handle_request(request)
        if time.monotonic() > deadline:
            response.close()
            raise httpx.ReadTimeout("no reply within the request's total timeout", request=request)
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        response.stream = _DeadlineStream(stream, deadline, request)
        return response


def deadline_client(seconds: float) -> httpx.Client:
    """An HTTP client whose every request has a total deadline of `seconds` (see DeadlineTransport); no redirects."""
    return httpx.Client(transport=DeadlineTransport(seconds), timeout=seconds, follow_redirects=False)


class LLMGenerator:
    """Texts from an LLM behind an OpenAI-compatible chat-completions endpoint, cached on disk per request."""

    def __init__(
        self,
        model: str,
        cache_dir: str | os.PathLike[str],
        base_url: str | None = None,
        api_key: str | None = None,
        max_workers: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        content_retries: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> None:
        if not model:
            raise LLMConfigError("no LLM model name given: pass the model your endpoint serves, e.g. 'gpt-4o-mini'")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not base_url:
                raise LLMConfigError("no API key: set OPENAI_API_KEY, or OPENAI_BASE_URL for a local server")
            key = "no-key"  # local servers (llama.cpp, vLLM) accept any key
        self._secret = key
        self.client = openai.OpenAI(
            base_url=base_url, api_key=key, max_retries=0, timeout=timeout,
            http_client=deadline_client(timeout),
        )  # fmt: skip
        self.base_url = _display_url(str(self.client.base_url))  # for messages: no user:password@, no ?query
        self.model = model
        self.source = f"llm:{model}"
        self.cache_dir = storage_path(cache_dir)
        self.max_workers = max_workers or server_slots(str(self.client.base_url), min(timeout, 5.0)) or 4
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.content_retries = content_retries
        self.params = {"temperature": temperature, "max_tokens": max_tokens}
        self.usage = Usage()
        self.failures: list[dict[str, str]] = []
        self.dropped: dict[str, dict[str, int]] = {}  # text type -> reason -> phrases dropped by the filter
        self.by_kind: dict[str, dict[str, int]] = {}  # text type -> requests asked (not cached), tokens spent
        self._structured: bool | None = None  # None: not known yet; False: endpoint lacks structured outputs
        self._lock = threading.Lock()
        self._fatal: LLMConfigError | None = None  # a bad key or a redirect: no thread sends anything more
        self._stop = stop_token()  # set by Ctrl-C or SIGTERM: no thread sends anything more, nor retries
        self.concurrency = self.max_workers  # halved on a timeout: a slow server gets fewer requests at once
        self._in_flight = 0
        self._slots = threading.Condition()

    # the generator interface -------------------------------------------------------------------------
    def attributes(self, classnames: Sequence[str], n: int) -> list[list[str]]:
        return self.run([attribute_request(c, n) for c in classnames])

    def analogies(
        self, classnames: Sequence[str], n: int, exclude: Sequence[Sequence[str]] | None = None
    ) -> list[list[str]]:
        excl = exclude or [() for _ in classnames]
        return self.run([analogy_request(c, n, e) for c, e in zip(classnames, excl, strict=True)])

    def synonyms(self, classnames: Sequence[str], n: int) -> list[list[str]]:
        return self.run([synonym_request(c, n) for c in classnames])

    def differences(self, pairs: Sequence[tuple[str, str]], n: int) -> list[list[str]]:
        return self.run([difference_request(a, b, n) for a, b in pairs])

    def report(self) -> dict[str, Any]:
        return {
            "source": self.source, "usage": asdict(self.usage), "failures": list(self.failures),
            "dropped": {k: dict(v) for k, v in self.dropped.items()},
            "by_type": {k: dict(v) for k, v in self.by_kind.items()},
        }  # fmt: skip

    # running requests ----------------------------------------------------------------------------------
    def run(self, requests: Sequence[Request]) -> list[list[str]]:
        """Answer requests concurrently (at most `concurrency` in flight), in order; [] where a request failed.

        On a terminal a progress bar shows requests done, tokens and failures; a summary line goes to the log.
        """
        if not requests:
            return []
        kind, start = requests[0].kind, time.perf_counter()
        before = asdict(self.usage)
        workers = max(1, min(self.max_workers, len(requests)))
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            with stage_progress(f"LLM {kind}", len(requests), "requests", "tokens") as bar:
                futures = [pool.submit(self.ask, r) for r in requests]
                for done in as_completed(futures):
                    done.result()  # a bad key or a redirect ends the stage now: the queued requests are not sent
                    tokens = self.usage.prompt_tokens + self.usage.completion_tokens
                    spent = tokens - before["prompt_tokens"] - before["completion_tokens"]
                    bar.advance(1, items=spent - bar.items, failed=self.usage.failed - before["failed"] - bar.failed)
                results = [f.result() for f in futures]
        except BaseException as exc:  # Ctrl-C, SIGTERM, a bad key: queued requests are dropped, not sent
            if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM (Prefect's TerminationSignal during a flow run)
                request_stop()  # the threads send nothing more: no new request, no retry
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        now = asdict(self.usage)
        log.info(
            "LLM %s: %d requests, %d from the cache, %d failed, %d tokens in %.1f s", kind, len(requests),
            now["cache_hits"] - before["cache_hits"], now["failed"] - before["failed"],
            now["prompt_tokens"] + now["completion_tokens"] - before["prompt_tokens"] - before["completion_tokens"],
            time.perf_counter() - start,
        )  # fmt: skip
        return results

    def cache_key(self, request: Request) -> str:
        payload = {
            "model": self.model,
            "messages": request.messages(),
            "params": self.params,
            "schema": request.response_model.model_json_schema(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def ask(self, request: Request) -> list[str]:
        """One request: from the cache, else from the endpoint, retrying refusals and empty replies a bounded number
        of times. Only replies with phrases are cached as answers; an empty or refused one is kept beside them as
        `<key>.failed.json` (for a look) and asked again on the next run, as are transient HTTP failures. Raises
        LLMConfigError on a bad key or model; records other failures and returns []."""
        key = self.cache_key(request)
        path = self.cache_dir / f"{key}.json"
        record = self._cached(path)
        if record is not None and record["items"]:  # an empty answer cached by an older coderflow is asked again
            with self._lock:
                self.usage.cache_hits += 1
            return record["items"]
        with self._lock:
            per = self.by_kind.setdefault(request.kind, {"requests": 0, "tokens": 0})
            per["requests"] += 1
            per["requested"] = per.get("requested", 0) + request.n
        for _ in range(self.content_retries + 1):
            try:
                reply = self._complete(request)
            except _Unavailable as exc:
                self._failed(request, str(exc))
                return []
            if reply.items:
                break
        items = [self._redact(x) for x in reply.items]  # a reply echoing the key never stores it
        raw = self._redact(reply.raw)
        record = {
            "key": key,
            "model": self.model,
            "kind": request.kind,
            "subject": request.subject,
            "messages": request.messages(),
            "params": self.params,
            "mode": reply.mode,
            "items": items,
            "problem": "" if items else self._redact(reply.problem),
            "raw": raw[:MAX_RAW_CHARS],
            "usage": reply.usage,
        }
        if len(raw) > MAX_RAW_CHARS:  # a runaway reply: its head is kept, the rest only counted
            record["raw_truncated_from"] = len(raw)
        target = path if items else self.cache_dir / f"{key}.failed.json"
        write_text(json.dumps(record, indent=1, ensure_ascii=False), target)
        if not items:
            self._failed(request, self._redact(reply.problem))
        return items

    def _cached(self, path: Path) -> dict[str, Any] | None:
        """A cached reply, or None when there is none or the file is unreadable (then the request is asked again)."""
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record.get("items"), list) and isinstance(record.get("problem", ""), str):
                return record
        except (OSError, ValueError, AttributeError, RecursionError):
            pass
        log.warning("LLM cache file %s is unreadable: asking the endpoint again", path.name)
        return None

    def _failed(self, request: Request, problem: str) -> None:
        with self._lock:
            self.usage.failed += 1
            self.failures.append({"kind": request.kind, "subject": request.subject, "problem": problem})
        log.warning("LLM gave nothing for %s %r: %s", request.kind, request.subject, printable(problem))

    def _complete(self, request: Request) -> _Reply:
        """One answer: structured outputs first, a plain completion with tolerant parsing when they fail."""
        messages: Any = request.messages(structured=True)
        if self._structured is not False:
            try:
                completion = self._call(
                    lambda: self.client.chat.completions.parse(
                        model=self.model, messages=messages, response_format=request.response_model, **self.params
                    )
                )
                usage = self._add_usage(completion, request.kind)
                if not getattr(completion, "choices", None):
                    return _Reply([], "structured", "", "no choices in reply", usage)
                message = completion.choices[0].message
                if message.refusal:
                    return _Reply([], "structured", message.refusal, f"refused: {message.refusal[:200]}", usage)
                raw = message.content or ""
                items = getattr(message.parsed, request.field) if message.parsed else parse_items(raw, request.field)
                return _Reply(self._clean(items, request), "structured", raw, "empty reply", usage)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                log.info("endpoint rejected structured outputs (%s): using plain completions", type(exc).__name__)
                self._structured = False
            except openai.LengthFinishReasonError as exc:  # cut at max_tokens: keep the complete items, if any
                usage = self._add_usage(exc.completion, request.kind)
                raw = exc.completion.choices[0].message.content or ""
                items = self._clean(parse_items(raw, request.field), request)
                if items:
                    return _Reply(items, "structured-truncated", raw, "", usage)
                log.info("reply for %r cut at max_tokens: asking again in plain mode", request.subject)
            except (ValidationError, ValueError) as exc:
                log.info("unparseable structured reply for %r (%s): asking again in plain mode", request.subject, exc)
            except openai.ContentFilterFinishReasonError:
                return _Reply([], "structured", "", "refused: content filter")
        plain: Any = request.messages(structured=False)
        try:
            completion = self._call(
                lambda: self.client.chat.completions.create(model=self.model, messages=plain, **self.params)
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            raise LLMConfigError(
                f"the LLM endpoint {self.base_url} rejected the request (HTTP {exc.status_code}: "
                f"{self._redact(exc.message)[:200]}): check the model name and the generation parameters {self.params}"
            ) from None
        usage = self._add_usage(completion, request.kind)
        message = completion.choices[0].message if getattr(completion, "choices", None) else None
        if message is None:
            return _Reply([], "plain", "", "no choices in reply", usage)
        if getattr(message, "refusal", None):
            return _Reply([], "plain", message.refusal, f"refused: {message.refusal[:200]}", usage)
        raw = message.content or ""
        return _Reply(self._clean(parse_items(raw, request.field), request), "plain", raw, "empty reply", usage)

    def _clean(self, items: Sequence[str], request: Request) -> list[str]:
        """clean_items, with the dropped phrases counted per text type and reason for the report."""
        dropped: dict[str, int] = {}
        kept = clean_items(items, request.n, request.subject, dropped)
        with self._lock:
            per = self.by_kind.setdefault(request.kind, {"requests": 0, "tokens": 0})
            per["received"] = per.get("received", 0) + len(items)
            counts = self.dropped.setdefault(request.kind, {})
            for reason, n in dropped.items():
                counts[reason] = counts.get(reason, 0) + n
        return kept

    def _add_usage(self, completion: Any, kind: str = "") -> dict[str, int]:
        usage = getattr(completion, "usage", None)
        got = {
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        }
        with self._lock:
            self.usage.prompt_tokens += got["prompt_tokens"]
            self.usage.completion_tokens += got["completion_tokens"]
            per = self.by_kind.setdefault(kind, {"requests": 0, "tokens": 0})
            per["tokens"] += got["prompt_tokens"] + got["completion_tokens"]
        return got

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if len(self._secret) >= 4 else text

    def _call(self, fn: Callable[[], T]) -> T:
        """Send one HTTP request, retrying transient errors (429, 5xx, timeouts, connection, a body that is not a chat
        completion) with exponential backoff or the server's Retry-After (tenacity); a bad key or model raises
        LLMConfigError at once; running out of attempts raises _Unavailable."""
        last: dict[str, str] = {}

        def attempt() -> T:
            self._check_stop()
            with self._lock:
                self.usage.calls += 1
            try:
                with self._slot():
                    self._check_stop()  # waited for a slot: a signal or a bad key may have come meanwhile
                    return fn()
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise LLMConfigError(
                    f"the LLM endpoint {self.base_url} refused the API key (HTTP {exc.status_code}): "
                    "check OPENAI_API_KEY (or the api_key argument) and OPENAI_BASE_URL"
                ) from None
            except openai.NotFoundError as exc:
                raise LLMConfigError(
                    f"model {self.model!r} or the chat-completions route is unknown at {self.base_url} (HTTP 404: "
                    f"{self._redact(exc.message)[:200]}): check the model name and OPENAI_BASE_URL"
                ) from None
            except TRANSIENT as exc:
                what = f"HTTP {exc.status_code}" if isinstance(exc, openai.APIStatusError) else type(exc).__name__
                if isinstance(exc, ValueError | TypeError | AttributeError | RecursionError):  # bad body
                    what = "a response body that is not a chat completion"
                if isinstance(exc, openai.APITimeoutError):
                    self._back_off()
                last["what"] = what
                raise
            except openai.APIStatusError as exc:
                if not 300 <= exc.status_code < 400:
                    raise
                target = urllib.parse.urljoin(str(exc.request.url), exc.response.headers.get("location", ""))
                raise LLMConfigError(
                    f"the LLM endpoint {self.base_url} redirects (HTTP {exc.status_code}) to {_display_url(target)}, "
                    "which is not followed (the API key goes to the configured host only): "
                    "set --texts.llm.base_url to the final address"
                ) from None

        def wait(state: tenacity.RetryCallState) -> float:
            delay = min(self.backoff * 2 ** (state.attempt_number - 1), self.max_backoff)
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, openai.APIStatusError):
                delay = min(_retry_after(exc) or delay, self.max_backoff)
            return delay

        def before_sleep(state: tenacity.RetryCallState) -> None:
            log.warning(
                "LLM request failed (%s); retry %d/%d in %.2fs", last.get("what"), state.attempt_number,
                self.max_retries, state.next_action.sleep if state.next_action else 0.0,
            )  # fmt: skip

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=wait,
            retry=tenacity.retry_if_exception_type(TRANSIENT),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except LLMConfigError as exc:
            self._fatal = exc
            raise
        except TRANSIENT:
            raise _Unavailable(f"{last.get('what')} after {self.max_retries + 1} attempts at {self.base_url}") from None

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of `concurrency` request slots while a request is in flight."""
        with self._slots:
            while self._in_flight >= self.concurrency:
                self._slots.wait()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._slots:
                self._in_flight -= 1
                self._slots.notify_all()

    def _check_stop(self) -> None:
        """Raise instead of sending: a bad key or redirect seen by any thread, or a signal (Ctrl-C, SIGTERM)."""
        if self._fatal is not None:
            raise self._fatal
        if self._stop.is_set():
            raise Interrupted("interrupted: no further LLM request is sent")

    def _sleep(self, seconds: float) -> None:
        """A back-off wait between attempts that a signal ends at once (no retry follows)."""
        if self._stop.wait(seconds):
            raise Interrupted("interrupted: no further LLM request is sent")

    def _back_off(self) -> None:
        """A timeout: halve the requests in flight (down to 1), since the server queues what it cannot run."""
        with self._slots:
            if self.concurrency > 1:
                self.concurrency = max(1, self.concurrency // 2)
                log.warning("LLM request timed out: %d request(s) in flight from now on", self.concurrency)


# errors worth another attempt: rate limits, server errors, timeouts and connections, and a reply body that is not
# a chat completion (a proxy's error page: the client raises while reading it)
TRANSIENT: tuple[type[BaseException], ...] = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.ConflictError,
    openai.APIConnectionError,
    json.JSONDecodeError,
    UnicodeDecodeError,  # a body that is not UTF-8: bad server output, like malformed JSON
    RecursionError,  # JSON nested deeper than the parser goes ('[' * 100000)
    TypeError,
    AttributeError,
)


def server_slots(base_url: str, timeout: float = 5.0) -> int | None:
    """How many requests the server runs at once, when it says (llama.cpp's GET /props `total_slots`); else None.

    More requests in flight than slots only queue at the server, where they run into their timeouts.
    """
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        with deadline_client(timeout) as client:  # a server trickling its reply cannot hold the run
            reply = client.get(f"{root}/props")
            slots = reply.json().get("total_slots") if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError, RecursionError):
        return None
    return int(slots) if isinstance(slots, int) and slots > 0 else None


def _display_url(url: str) -> str:
    """The URL without credentials or query (an Azure-style `?api-key=` or `user:key@` must not reach a message)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class _Unavailable(Exception):
    """Transient errors outlasted the retries."""
