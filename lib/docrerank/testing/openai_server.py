"""A small fake OpenAI-compatible chat server on loopback, for tests (stdlib only).

    with FakeOpenAIServer(mode="ok") as srv:
        engine = build_engine(EngineConfig(backend="http", model="fake", http={"base_url": srv.url}))

Modes (``srv.mode`` can be changed while it runs):
- ``ok``: a valid completion. JSON when ``response_format`` asks for it (``reply_json``), else ``reply_text``;
  a one-token judgement answers "Yes" or "No", with ``top_logprobs`` when asked. The judged probability is
  read from the prompt: a last user text containing ``p=0.8`` gets logprobs log(0.8) / log(0.2) for Yes / No,
  so tests can check that answers come back to the right requests.
- ``no_logprobs``: as ok, never any logprobs.
- ``bad_json``: JSON requests get broken JSON, unless the conversation already holds an assistant turn
  (a repair request), which gets valid JSON.
- ``fail``: HTTP 500. ``429``: HTTP 429 with Retry-After 0. ``flaky``: the first ``fail_first`` requests get
  HTTP 503, then ok. ``stall``: waits ``stall_s`` before answering. ``junk``: HTTP 200 with a body that is not JSON.

``json_formats``: the ``response_format`` types the server takes (in every mode); a request with another type gets
``format_status`` (default 500, as llama.cpp's server answers ``json_schema``) naming the format it rejected.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

MODES = ("ok", "no_logprobs", "bad_json", "fail", "429", "flaky", "stall", "junk")


class FakeOpenAIServer:
    """See the module docstring. ``requests`` and ``headers`` record every request received."""

    def __init__(
        self,
        mode: str = "ok",
        *,
        fail_first: int = 0,
        stall_s: float = 5.0,
        reply_text: str = "What was the revenue of the cloud segment in 2021?",
        reply_json: Optional[Any] = None,
        default_p_yes: float = 0.75,
        delay_s: float = 0.0,
        json_formats: tuple = ("json_schema", "json_object"),
        format_status: int = 500,
    ):
        if mode not in MODES:
            raise ValueError(f"mode: got {mode!r}, expected one of {MODES}")
        self.mode = mode
        self.fail_first = fail_first
        self.stall_s = stall_s
        self.reply_text = reply_text
        self.reply_json = reply_json if reply_json is not None else {"queries": ["what is the revenue in 2021"]}
        self.default_p_yes = default_p_yes
        self.delay_s = delay_s
        self.json_formats = tuple(json_formats)
        self.format_status = format_status
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """Base URL (``http://127.0.0.1:PORT/v1``)."""
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeOpenAIServer":
        """Start serving in a daemon thread on a free loopback port."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (stalled handlers are released)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ responses
    def respond(self, body: dict) -> tuple[int, dict, bytes]:
        """(status, headers, payload) for one request body, according to the mode."""
        with self._lock:
            n_seen = len(self.requests)
        mode = self.mode
        fmt = (body.get("response_format") or {}).get("type")
        if fmt is not None and fmt not in self.json_formats:
            msg = f"response_format type {fmt!r} is not supported, expected one of {list(self.json_formats)}"
            return self.format_status, {}, json.dumps({"error": {"message": msg}}).encode()
        if mode == "fail":
            return 500, {}, b'{"error": {"message": "internal error"}}'
        if mode == "429":
            return 429, {"Retry-After": "0"}, b'{"error": {"message": "rate limited"}}'
        if mode == "flaky" and n_seen <= self.fail_first:
            return 503, {}, b'{"error": {"message": "overloaded"}}'
        if mode == "stall":
            self._stop.wait(self.stall_s)
        if mode == "junk":
            return 200, {"Content-Type": "text/html"}, b"<html>502 Bad Gateway</html>"
        return 200, {"Content-Type": "application/json"}, json.dumps(self.completion(body)).encode()

    def completion(self, body: dict) -> dict:
        """A chat-completions response for ``body``."""
        messages = body.get("messages") or []
        last_text = _last_user_text(messages)
        n = int(body.get("n", 1))
        choice_logprobs = None
        if body.get("max_tokens") == 1:
            m = re.search(r"p=([0-9.]+)", last_text)
            p = float(m.group(1)) if m else self.default_p_yes
            p = min(max(p, 1e-6), 1 - 1e-6)
            content = "Yes" if p >= 0.5 else "No"
            if body.get("logprobs") and self.mode != "no_logprobs":
                top = [{"token": "Yes", "logprob": math.log(p)}, {"token": "No", "logprob": math.log(1 - p)},
                       {"token": "Maybe", "logprob": math.log(1e-4)}]
                choice_logprobs = {"content": [{"token": content, "logprob": max(t["logprob"] for t in top[:2]),
                                                "top_logprobs": top}]}
        elif body.get("response_format") or "JSON schema" in last_text:
            repaired = any(m.get("role") == "assistant" for m in messages)
            content = json.dumps(self.reply_json)
            if self.mode == "bad_json" and not repaired:
                content = '{"queries": ["unterminated'
        else:
            content = self.reply_text
        choices = [
            {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
             "logprobs": choice_logprobs}
            for i in range(n)
        ]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {"prompt_tokens": 10 + len(last_text) // 4, "completion_tokens": n * max(1, len(content) // 4)},
        }


def _last_user_text(messages: list) -> str:
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return content
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _make_handler(server: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            with server._lock:
                server.inflight += 1
                server.max_inflight = max(server.max_inflight, server.inflight)
            try:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    status, headers, payload = 404, {}, b'{"error": {"message": "not found"}}'
                else:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    with server._lock:
                        server.requests.append(body)
                        server.headers.append(dict(self.headers.items()))
                    if server.delay_s:
                        time.sleep(server.delay_s)
                    status, headers, payload = (400, {}, b'{"error": "bad json"}') if body is None else \
                        server.respond(body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); nothing to answer
            finally:
                with server._lock:
                    server.inflight -= 1

    return Handler
