"""OpenAI-compatible chat endpoint backend (vLLM serve, TGI, SGLang, OpenAI, ...).

Bounded concurrency (a thread pool of ``http.max_concurrency``), a timeout per attempt, retries with
exponential backoff and jitter on 429, 5xx, timeouts and connection errors (``Retry-After`` honoured, capped).
The API key is read from the environment variable named in the config when the engine is built and is sent
only as the Authorization header: it is never stored in the config, logged, or put in an error message.
Judging uses the logprobs of a one-token answer, kept to the two answer words where the server allows it
(``http.answer_tokens``: vLLM's ``allowed_token_ids`` + ``logprob_token_ids``, or ``logit_bias``, with the words'
token ids from the server's ``/tokenize``), else its ``top_logprobs``; an endpoint that returns no logprobs falls
back to the one-token answer itself (judge_mode "auto"), reported with method "answer".

Servers differ in the JSON constraint they take (see ``docs/engines.md``): OpenAI, vLLM and SGLang take
``response_format: {type: json_schema}``; llama.cpp's Python server takes ``{type: json_object, schema}`` and
answers json_schema with HTTP 500. With ``json_mode: auto`` the engine sends json_schema, and when a server rejects
a request for its response_format (a 4xx, or a 5xx whose body names the response format) it steps down to
json_object with the schema, then to the schema in the prompt only: once per engine, under a lock (requests run in
a thread pool), with a log line, and that request is sent again in the new mode at no retry cost. Other 4xx
answers mean the request is malformed and are not retried.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

from docrerank.engines.base import TextEngine
from docrerank.engines.config import EngineConfig
from docrerank.engines.messages import to_openai_dicts
from docrerank.engines.parsing import judge_from_top_logprobs
from docrerank.engines.requests import (
    GenerateRequest,
    JudgeRequest,
    JudgeResult,
    RawGeneration,
    error_kind,
    make_error,
)

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
"""Answers worth another attempt: timeouts, rate limits, server errors (other 4xx: the request is malformed)."""

JSON_MODES = ("json_schema", "json_object", "none")
"""How a schema is sent, most constrained first; ``json_mode: auto`` steps down this list on rejection."""

FORMAT_REJECTED = "the server rejected the response_format;"

SCHEMA_PROMPT = "Reply with JSON only, no other text, following this JSON schema: {schema}"


def generate_body(model: str, req: GenerateRequest, json_mode: str, extra: dict) -> dict:
    """Chat-completions request body for a generate request; ``json_mode`` is one of ``JSON_MODES``."""
    s = req.sampling
    messages = to_openai_dicts(req.messages)
    if req.json_schema is not None and json_mode == "none":
        messages.append({"role": "user", "content": SCHEMA_PROMPT.format(
            schema=json.dumps(req.json_schema, separators=(",", ":")))})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "n": s.n,
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if req.json_schema is not None and json_mode == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": req.json_schema}}
    elif req.json_schema is not None and json_mode == "json_object":
        body["response_format"] = {"type": "json_object", "schema": req.json_schema}
    return {**body, **extra}


def rejects_response_format(status: int, text: str) -> bool:
    """Whether an error answer rejects the request's ``response_format`` (rather than failing for another reason):
    a 4xx, or a 5xx (llama.cpp answers an unknown format with 500), whose body names the format."""
    if status < 400 or status in (408, 429):
        return False
    low = text.lower()
    return "response_format" in low or "json_schema" in low or "json_object" in low


def judge_body(model: str, req: JudgeRequest, with_logprobs: bool, top_logprobs: int, extra: dict,
               answer_ids: Optional[tuple[int, int]] = None, restrict: str = "none") -> dict:
    """Chat-completions request body for a judgement: one greedy token, with top_logprobs when asked. With the
    answer words' token ids, the token is kept to the two words: ``restrict`` "allowed_token_ids" (vLLM: also the
    logprobs of exactly those ids) or "logit_bias" (+100 on each)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": to_openai_dicts(req.messages),
        "temperature": 0.0,
        "max_tokens": 1,
    }
    if with_logprobs:
        body.update(logprobs=True, top_logprobs=top_logprobs)
    if answer_ids is not None and restrict == "allowed_token_ids":
        body.update(allowed_token_ids=list(answer_ids), logprob_token_ids=list(answer_ids))
    elif answer_ids is not None and restrict == "logit_bias":
        body["logit_bias"] = {str(i): 100 for i in answer_ids}
    return {**body, **extra}


def parse_generation(data: Any) -> RawGeneration:
    """A chat-completions response -> texts, finish reasons, token counts (bad_response on a wrong shape)."""
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts, reasons = [], []
        for c in choices:
            msg = c["message"]
            content = msg.get("content")
            if not content and msg.get("refusal"):
                return RawGeneration(error=make_error("refusal", str(msg["refusal"])[:80]))
            if content is not None and not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
            texts.append(content or "")
            reasons.append(c.get("finish_reason") or "stop")
        usage = data.get("usage") or {}
        if not choices:
            raise ValueError("no choices")
        return RawGeneration(texts=texts, finish_reasons=reasons, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             completion_tokens=int(usage.get("completion_tokens", 0)))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return RawGeneration(error=make_error("bad_response", f"unexpected response shape ({err})"))


def parse_judgement(data: Any, yes: str, no: str, allow_answer: bool) -> JudgeResult:
    """Judgement from a one-token response: top_logprobs if present, else (when allowed) the answer word."""
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        content = (choice.get("logprobs") or {}).get("content") or []
        if content and (content[0].get("top_logprobs") or "logprob" in content[0]):
            top = {t["token"]: float(t["logprob"]) for t in content[0].get("top_logprobs") or []}
            if content[0].get("token") is not None and "logprob" in content[0]:  # the answer token itself
                top.setdefault(content[0]["token"], float(content[0]["logprob"]))
            res = judge_from_top_logprobs(top, yes, no)
            res.prompt_tokens = prompt_tokens
            return res
        if not allow_answer:
            return JudgeResult(error=make_error("missing_logprobs", "endpoint returned no top_logprobs"),
                               prompt_tokens=prompt_tokens)
        answer = (choice["message"].get("content") or "").strip().strip(".!,:;\"'").lower()
        if answer in (yes.lower(), no.lower()):
            return JudgeResult(p_yes=float(answer == yes.lower()), method="answer", prompt_tokens=prompt_tokens)
        return JudgeResult(error=make_error("bad_response", f"answer {answer[:20]!r} is neither {yes!r} nor {no!r}"),
                           prompt_tokens=prompt_tokens)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        return JudgeResult(error=make_error("bad_response", f"unexpected response shape ({err})"))


def backoff_delay(attempt: int, base: float, cap: float, retry_after: Optional[str] = None) -> float:
    """Delay before retry ``attempt`` (0-based): Retry-After when numeric, else base * 2**attempt with jitter."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), cap)
        except ValueError:
            pass
    return min(cap, base * (2**attempt)) * (0.5 + random.random() / 2)


class HTTPEngine(TextEngine):
    """Engine on an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(self, cfg: EngineConfig):
        import httpx

        super().__init__()
        self.cfg, self.opts = cfg, cfg.http
        self.json_repair, self.reject_refusals = cfg.json_repair, cfg.reject_refusals
        key = os.environ.get(self.opts.api_key_env) if self.opts.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.opts.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self.opts.timeout_s),
            limits=httpx.Limits(max_connections=self.opts.max_concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=self.opts.max_concurrency, thread_name_prefix="docrerank-http")
        self._json_mode = "json_schema" if self.opts.json_mode == "auto" else self.opts.json_mode
        self._json_lock = threading.Lock()
        self._ids: dict = {}
        self._ids_lock = threading.Lock()

    def __repr__(self) -> str:  # never show headers (the key)
        return f"HTTPEngine(base_url={self.opts.base_url!r}, model={self.cfg.model!r})"

    def post(self, body: dict, format_sensitive: bool = False) -> tuple[Optional[Any], Optional[str]]:
        """POST one body with retries; returns (parsed JSON, None) or (None, error).

        With ``format_sensitive``, an answer that rejects the body's response_format returns at once (no retries)
        with a ``request_failed`` error that contains ``FORMAT_REJECTED``.
        """
        httpx = self._httpx
        error = None
        for attempt in range(self.opts.max_retries + 1):
            retry_after = None
            try:
                resp = self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                error = make_error("timeout", f"no answer in {self.opts.timeout_s}s ({attempt + 1} attempts)")
            except httpx.TransportError as err:
                error = make_error("request_failed", f"{type(err).__name__} ({attempt + 1} attempts)")
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json(), None
                    except ValueError:
                        return None, make_error("bad_response", f"HTTP {resp.status_code} body is not JSON: "
                                                f"{resp.text[:60]!r}")
                if format_sensitive and rejects_response_format(resp.status_code, resp.text):
                    return None, make_error("request_failed", f"{FORMAT_REJECTED} HTTP {resp.status_code}: "
                                            f"{resp.text[:200]!r}")
                error = make_error("request_failed", f"HTTP {resp.status_code}: {resp.text[:120]!r} "
                                   f"({attempt + 1} attempts)")
                if resp.status_code not in RETRY_STATUS:
                    return None, error
                retry_after = resp.headers.get("retry-after")
            if attempt < self.opts.max_retries:
                time.sleep(backoff_delay(attempt, self.opts.backoff_s, self.opts.backoff_max_s, retry_after))
        return None, error

    @property
    def json_mode(self) -> str:
        """The JSON constraint sent now (one of ``JSON_MODES``)."""
        return self._json_mode

    def _step_down(self, rejected: str, detail: str) -> Optional[str]:
        """After the server rejected ``rejected``: the next mode (once per engine; None when there is none)."""
        with self._json_lock:
            if self._json_mode == rejected:  # the first thread to see the rejection moves the engine down
                nxt = JSON_MODES.index(rejected) + 1
                if nxt == len(JSON_MODES):
                    return None
                self._json_mode = JSON_MODES[nxt]  # type: ignore[assignment]  # JSON_MODES holds the Literal's values
                self.stats[f"json_mode_{self._json_mode}"] += 1
                log.warning("%s rejected response_format %s (%s); sending JSON schemas as %s from now on",
                            self.opts.base_url, rejected, detail[:160], self._json_mode)
            return self._json_mode

    def _generate_one(self, req: GenerateRequest) -> RawGeneration:
        while True:
            mode = self._json_mode
            try:
                body = generate_body(self.cfg.model, req, mode, self.opts.extra_body)
            except ValueError as e:
                return RawGeneration(error=make_error("bad_input", str(e)))
            data, err = self.post(body, format_sensitive=req.json_schema is not None and mode != "none")
            if err and FORMAT_REJECTED in err:
                if self.opts.json_mode == "auto" and self._step_down(mode, err) is not None:
                    continue
                return RawGeneration(error=f"{err} (http.json_mode={self.opts.json_mode}; 'auto' steps down to a "
                                           "format the server takes)")
            return RawGeneration(error=err) if err else parse_generation(data)

    def _generate_raw(self, requests: Sequence[GenerateRequest]) -> list[RawGeneration]:
        return list(self._pool.map(self._generate_one, requests))

    def answer_ids(self, yes: str, no: str) -> Optional[tuple[int, int]]:
        """The first token ids of the two answer words (``answer_token_ids``, else the server's ``/tokenize``, asked
        once per pair); None when unknown or when ``answer_tokens`` is "none" ("auto" then sends top_logprobs
        only; an explicit mode without ids is a ValueError)."""
        mode = self.opts.answer_tokens
        if mode == "none" or self.opts.judge_mode == "answer":
            return None
        with self._ids_lock:
            if (yes, no) not in self._ids:
                self._ids[(yes, no)] = self._lookup_ids(yes, no)
            ids = self._ids[(yes, no)]
        if isinstance(ids, str):
            if mode == "auto":
                return None
            raise ValueError(f"http.answer_tokens={mode}: {ids}")
        return ids

    def _lookup_ids(self, yes: str, no: str):
        given = self.opts.answer_token_ids
        if yes in given and no in given:
            return int(given[yes]), int(given[no])
        root = self.opts.base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        ids = []
        for word in (yes, no):
            try:
                resp = self._client.post(f"{root}/tokenize", json={"model": self.cfg.model, "prompt": word,
                                                                   "add_special_tokens": False})
                tokens = resp.json().get("tokens") if resp.status_code == 200 else None
            except (self._httpx.HTTPError, ValueError, AttributeError) as err:
                tokens, resp = None, err
            if not tokens:
                why = (f"the answer words' token ids are unknown (set http.answer_token_ids; {root}/tokenize "
                       f"answered {getattr(resp, 'status_code', type(resp).__name__)})")
                log.warning("%s: judging from top_logprobs only (%s)", self.opts.base_url, why)
                return why
            ids.append(int(tokens[0]))
        if ids[0] == ids[1]:
            return f"answer words {yes!r}/{no!r} start with the same token"
        self.stats["judge_answer_ids"] += 1
        return ids[0], ids[1]

    def _judge_one(self, req: JudgeRequest) -> JudgeResult:
        mode = self.opts.judge_mode
        try:
            ids = self.answer_ids(req.yes, req.no)
            restrict = "allowed_token_ids" if self.opts.answer_tokens == "auto" else self.opts.answer_tokens
            body = judge_body(self.cfg.model, req, mode != "answer", self.opts.top_logprobs, self.opts.extra_body,
                              ids, restrict)
        except ValueError as e:
            return JudgeResult(error=make_error("bad_input", str(e)), id=req.id)
        data, err = self.post(body)
        res = JudgeResult(error=err) if err else parse_judgement(data, req.yes, req.no, allow_answer=mode != "logprobs")
        res.id = req.id
        return res

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """P(yes) per request from the endpoint's top_logprobs (see the module docstring)."""
        results = list(self._pool.map(self._judge_one, requests))
        self.stats.update("judge_" + (error_kind(r.error) or "ok") for r in results)
        return results

    def close(self) -> None:
        """Close connections and worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
