"""A scriptable fake OpenAI-compatible chat-completions server on 127.0.0.1, for tests at the network edge."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

API_KEY = "sk-test-SECRET-0123456789abcdef"  # a key that must never show up in files or messages


@dataclass
class Reply:
    """One scripted HTTP answer."""

    status: int = 200
    body: Any = None  # dict -> JSON, str or bytes -> sent as is (malformed bodies)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0  # seconds between the body's bytes (a server that never stops sending)


def completion(
    content: str | None = "",
    refusal: str | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    finish_reason: str = "stop",
) -> Reply:
    """A chat completion whose message has the given content (or refusal)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message = {"role": "assistant", "content": None, "refusal": refusal}
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Reply(200, body)


def error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return Reply(status, body, headers or {})


def structured(request: dict[str, Any], items: list[str] | None = None) -> Reply:
    """A good answer to any generator request: a JSON object with the schema's one list field."""
    schema = (request.get("response_format") or {}).get("json_schema", {}).get("schema", {})
    key = next(iter(schema.get("properties", {})), None) or _field_from_prompt(request)
    tag = hashlib.sha256(request["messages"][-1]["content"].encode()).hexdigest()[:6]
    return completion(json.dumps({key: items if items is not None else [f"thing {i} {tag}" for i in range(3)]}))


def _field_from_prompt(request: dict[str, Any]) -> str:
    text = request["messages"][-1]["content"]
    start = text.index('{"') + 2
    return text[start : text.index('"', start)]


class FakeOpenAI:
    """HTTP server answering POST /v1/chat/completions from a script (first) or a responder function (then).

    requests holds every request body received; script is a deque of Reply; responder(request) -> Reply.
    """

    def __init__(self, responder: Callable[[dict[str, Any]], Reply] = structured, model: str = "fake-model") -> None:
        self.responder = responder
        self.model = model
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.slots: int | None = None  # set: answer GET /props like llama.cpp with this many slots
        self.props: Reply | None = None  # set: answer GET /props with this reply (a trickle, a redirect, ...)
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def _next(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if request.get("model") != self.model:
            return error(404, f"The model `{request.get('model')}` does not exist", "model_not_found")
        return self.responder(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/props" and fake.props:
                    self._send(fake.props)
                elif self.path.rstrip("/") == "/props" and fake.slots:  # llama.cpp's server properties
                    self._send(Reply(200, {"total_slots": fake.slots}))
                else:
                    self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(request)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    reply = error(404, f"no route {self.path}")
                elif self.headers.get("authorization") != f"Bearer {API_KEY}":
                    reply = error(401, "Incorrect API key provided", "invalid_api_key")
                else:
                    reply = fake._next(request)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                time.sleep(reply.delay)
                body = reply.body if isinstance(reply.body, str | bytes) else json.dumps(reply.body)
                data = body if isinstance(body, bytes) else body.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    if reply.trickle:
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.trickle)
                    else:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running fake server; script it with .push(...) or replace .responder."""
    with FakeOpenAI() as server:
        yield server


def make_generator(server: FakeOpenAI, cache: Any, **kw: Any) -> Any:
    """An LLMGenerator pointed at the fake server, with short timeouts and backoff for tests (kw overrides)."""
    from coderflow.tasks.texts.llm import LLMGenerator

    opts = {"timeout": 0.3, "backoff": 0.01, "max_retries": 2, "max_workers": 2} | kw
    return LLMGenerator("fake-model", cache, base_url=server.base_url, api_key=API_KEY, **opts)
