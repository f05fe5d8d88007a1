"""Calls to an OpenAI-compatible endpoint: a total deadline per request, retries, bounded concurrency, errors."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import openai
import tenacity

from coderflow.tasks import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


class LLMConfigError(ConfigError):
    """The endpoint rejected the configuration (bad API key, unknown model): retrying cannot help."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived: a thread about to send a request, or to retry one, stops instead."""


class Unavailable(Exception):
    """Transient errors outlasted the retries."""


@dataclass
class Usage:
    """Requests sent, replies served from the cache, tokens spent and requests that gave nothing."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0


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


def display_url(url: str) -> str:
    """The URL without credentials or query (an Azure-style `?api-key=` or `user:key@` must not reach a message)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class EndpointCalls:
    """Sending requests for LLMGenerator: at most `concurrency` in flight, transient errors retried with back-off, and
    no request at all after a bad key, a redirect or a signal. The generator sets the attributes below."""

    base_url: str
    model: str
    max_retries: int
    backoff: float
    max_backoff: float
    usage: Usage
    concurrency: int
    _secret: str
    _lock: threading.Lock
    _fatal: LLMConfigError | None
    _stop: threading.Event
    _in_flight: int
    _slots: threading.Condition

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if len(self._secret) >= 4 else text

    def _call(self, fn: Callable[[], T]) -> T:
        """Send one HTTP request, retrying transient errors (429, 5xx, timeouts, connection, a body that is not a chat
        completion) with exponential backoff or the server's Retry-After (tenacity); a bad key or model raises
        LLMConfigError at once; running out of attempts raises Unavailable."""
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
                    f"the LLM endpoint {self.base_url} redirects (HTTP {exc.status_code}) to {display_url(target)}, "
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
            raise Unavailable(f"{last.get('what')} after {self.max_retries + 1} attempts at {self.base_url}") from None

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
