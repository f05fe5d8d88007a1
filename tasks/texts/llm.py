"""LLM text generator over any OpenAI-compatible endpoint: structured outputs or plain replies, disk cache, usage."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
from pydantic import ValidationError

from coderflow.console import printable
from coderflow.interrupt import request_stop, stop_token
from coderflow.progress import stage_progress
from coderflow.storage.atomic import write_text
from coderflow.storage.layout import storage_path
from coderflow.tasks.texts.llm_endpoint import (
    EndpointCalls,
    LLMConfigError,
    Unavailable,
    Usage,
    deadline_client,
    display_url,
    server_slots,
)
from coderflow.tasks.texts.llm_prompts import (
    Request,
    analogy_request,
    attribute_request,
    difference_request,
    synonym_request,
)
from coderflow.tasks.texts.llm_replies import clean_items, parse_items

log = logging.getLogger(__name__)


@dataclass
class _Reply:
    items: list[str]
    mode: str
    raw: str = ""
    problem: str = ""
    usage: dict[str, int] = field(default_factory=dict)


MAX_RAW_CHARS = 20_000  # the reply text kept in the cache per request (the phrases are short; a reply is ~1 KB)


class LLMGenerator(EndpointCalls):
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
        self.base_url = display_url(str(self.client.base_url))  # for messages: no user:password@, no ?query
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
            except Unavailable as exc:
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
