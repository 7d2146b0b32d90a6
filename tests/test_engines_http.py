"""The OpenAI-compatible HTTP backend against a fake server on loopback (ok, fail, stall, junk, 429, ...)."""

from __future__ import annotations

import io
import time

import pytest

from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, count_errors, \
    error_kind, user
from docrerank.engines.http import backoff_delay
from docrerank.testing.openai_server import FakeOpenAIServer

SCHEMA = {"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
          "required": ["queries"]}
SECRET = "sk-test-secret-value-123"


def make_engine(srv, **http):
    opts = {"base_url": srv.url, "max_retries": 2, "backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0,
            "api_key_env": "DOCRERANK_TEST_KEY"}
    opts.update(http)
    return build_engine(EngineConfig(backend="http", model="fake-model", http=opts))


@pytest.fixture
def srv():
    with FakeOpenAIServer() as s:
        yield s


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="PNG")
    return buf.getvalue()


def test_judge_from_top_logprobs_in_order_with_bounded_concurrency(srv, monkeypatch):
    monkeypatch.setenv("DOCRERANK_TEST_KEY", SECRET)
    srv.delay_s = 0.05
    eng = make_engine(srv, max_concurrency=3)
    ps = [round(0.05 * k, 2) for k in range(1, 19)]
    res = eng.judge([JudgeRequest([user(png(), f"Can this page answer? p={p}")], id=str(p)) for p in ps])
    assert [r.id for r in res] == [str(p) for p in ps]
    assert [r.p_yes for r in res] == pytest.approx(ps, abs=1e-9)
    assert all(r.method == "logprobs" for r in res)
    assert 1 < srv.max_inflight <= 3
    body = srv.requests[0]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    # The key goes out as the Authorization header and nowhere else.
    assert srv.headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(eng) and SECRET not in eng.cfg.model_dump_json()


def test_key_never_in_errors(monkeypatch):
    monkeypatch.setenv("DOCRERANK_TEST_KEY", SECRET)
    with FakeOpenAIServer(mode="fail") as srv:
        [res] = make_engine(srv).judge([JudgeRequest([user("q")])])
    assert error_kind(res.error) == "request_failed" and SECRET not in res.error


def test_generate_text_and_json(srv):
    eng = make_engine(srv)
    text, js = eng.generate([
        GenerateRequest([user("Write a query.")], SamplingParams(max_tokens=20, n=2, seed=3, stop=("\n",))),
        GenerateRequest([user("Queries as JSON.")], json_schema=SCHEMA),
    ])
    assert text.ok and text.texts == [srv.reply_text] * 2 and text.parsed is None
    assert text.prompt_tokens > 0 and text.completion_tokens > 0
    assert js.ok and js.parsed == [srv.reply_json]
    # Requests run concurrently: find each body by its content, not by arrival order.
    first, second = sorted(srv.requests, key=lambda body: "response_format" in body)
    assert first["n"] == 2 and first["seed"] == 3 and first["stop"] == ["\n"] and "response_format" not in first
    assert second["response_format"]["json_schema"]["schema"] == SCHEMA


def test_invalid_json_gets_one_repair(srv):
    srv.mode = "bad_json"
    eng = make_engine(srv)
    [res] = eng.generate([GenerateRequest([user("Queries as JSON.")], json_schema=SCHEMA)])
    assert res.ok and res.repaired == 1 and res.parsed == [srv.reply_json]
    repair = srv.requests[-1]["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"].startswith('{"queries": ["unterminated')


def test_refusal_and_empty_output_are_errors(srv):
    eng = make_engine(srv)
    srv.reply_text = "I'm sorry, but I can't help with that."
    res = eng.generate([GenerateRequest([user("q")])])
    assert error_kind(res[0].error) == "refusal"
    srv.reply_text = "   "
    assert error_kind(eng.generate([GenerateRequest([user("q")])])[0].error) == "empty_output"


def test_server_errors_are_retried_then_reported():
    with FakeOpenAIServer(mode="fail") as srv:
        [res] = make_engine(srv, max_retries=2).generate([GenerateRequest([user("q")])])
        assert error_kind(res.error) == "request_failed" and "HTTP 500" in res.error
        assert len(srv.requests) == 3  # first try + 2 retries
    with FakeOpenAIServer(mode="429") as srv:
        [res] = make_engine(srv, max_retries=1).judge([JudgeRequest([user("q")])])
        assert error_kind(res.error) == "request_failed" and "429" in res.error and len(srv.requests) == 2


def test_flaky_server_recovers_and_failures_stay_per_request():
    with FakeOpenAIServer(mode="flaky", fail_first=2) as srv:
        [res] = make_engine(srv, max_retries=2).judge([JudgeRequest([user("q p=0.3")])])
        assert res.ok and res.p_yes == pytest.approx(0.3) and len(srv.requests) == 3
    with FakeOpenAIServer(mode="flaky", fail_first=1) as srv:
        res = make_engine(srv, max_retries=0, max_concurrency=1).judge(
            [JudgeRequest([user(f"q p=0.{k}")]) for k in range(1, 5)])
        assert count_errors(res) == {"request_failed": 1, "ok": 3}
        assert [r.p_yes for r in res[1:]] == pytest.approx([0.2, 0.3, 0.4])


def test_stalled_server_times_out_in_bounded_time():
    with FakeOpenAIServer(mode="stall", stall_s=10) as srv:
        eng = make_engine(srv, timeout_s=0.3, max_retries=1)
        t = time.perf_counter()
        [res] = eng.judge([JudgeRequest([user("q")])])
        assert error_kind(res.error) == "timeout"
        assert time.perf_counter() - t < 3


def test_junk_and_missing_logprobs():
    with FakeOpenAIServer(mode="junk") as srv:
        eng = make_engine(srv)
        assert error_kind(eng.judge([JudgeRequest([user("q")])])[0].error) == "bad_response"
        assert error_kind(eng.generate([GenerateRequest([user("q")])])[0].error) == "bad_response"
    with FakeOpenAIServer(mode="no_logprobs") as srv:
        auto = make_engine(srv).judge([JudgeRequest([user("q p=0.2")]), JudgeRequest([user("q p=0.9")])])
        assert [(r.p_yes, r.method) for r in auto] == [(0.0, "answer"), (1.0, "answer")]
        [strict] = make_engine(srv, judge_mode="logprobs").judge([JudgeRequest([user("q")])])
        assert error_kind(strict.error) == "missing_logprobs"
        make_engine(srv, judge_mode="answer").judge([JudgeRequest([user("q")])])
        assert "logprobs" not in srv.requests[-1]


def test_unreachable_endpoint():
    eng = build_engine(EngineConfig(backend="http", model="m", http={
        "base_url": "http://127.0.0.1:9/v1", "max_retries": 1, "backoff_s": 0.01, "timeout_s": 1}))
    [res] = eng.judge([JudgeRequest([user("q")])])
    assert error_kind(res.error) in ("request_failed", "timeout")


def test_backoff_delay():
    assert backoff_delay(0, 1.0, 10.0, retry_after="3") == 3.0
    assert backoff_delay(0, 1.0, 2.0, retry_after="30") == 2.0
    assert 0.5 <= backoff_delay(0, 1.0, 10.0) <= 1.0
    assert 2.0 <= backoff_delay(2, 1.0, 10.0) <= 4.0
    assert backoff_delay(10, 1.0, 5.0) <= 5.0


def test_malformed_request_is_not_retried():
    with FakeOpenAIServer(json_formats=(), format_status=400) as srv:
        [res] = make_engine(srv, max_retries=3, json_mode="json_schema").generate(
            [GenerateRequest([user("Queries as JSON.")], json_schema=SCHEMA)])
        assert error_kind(res.error) == "request_failed" and "json_mode" in res.error
        assert len(srv.requests) == 1


def test_json_mode_steps_down_once_like_llama_cpp(caplog):
    # llama.cpp's server answers response_format json_schema with HTTP 500 and takes json_object + schema.
    with FakeOpenAIServer(json_formats=("json_object",), format_status=500, delay_s=0.05) as srv:
        eng = make_engine(srv, max_concurrency=3, max_retries=3)
        with caplog.at_level("WARNING", logger="docrerank.engines.http"):
            res = eng.generate([GenerateRequest([user(f"Queries as JSON {k}.")], json_schema=SCHEMA)
                                for k in range(6)])
        assert count_errors(res) == {"ok": 6} and all(r.parsed == [srv.reply_json] for r in res)
        assert eng.json_mode == "json_object" and eng.stats["json_mode_json_object"] == 1
        assert len([r for r in caplog.records if "rejected response_format json_schema" in r.message]) == 1
        kinds = [b["response_format"]["type"] for b in srv.requests]
        # No retries of the rejected format: one json_schema attempt per request that went out before the step
        # down (at most max_concurrency), then json_object for all six, with the schema.
        assert 1 <= kinds.count("json_schema") <= 3 and kinds.count("json_object") == 6
        assert all(b["response_format"]["schema"] == SCHEMA for b in srv.requests if "schema" in b["response_format"])
        srv.requests.clear()  # the engine remembers: no json_schema attempt any more
        eng.generate([GenerateRequest([user("Queries as JSON.")], json_schema=SCHEMA)])
        assert [b["response_format"]["type"] for b in srv.requests] == ["json_object"]


def test_json_mode_steps_down_to_prompt_only():
    with FakeOpenAIServer(json_formats=(), format_status=400) as srv:
        eng = make_engine(srv, max_concurrency=1)
        [res] = eng.generate([GenerateRequest([user("Queries as JSON.")], json_schema=SCHEMA)])
        assert res.ok and res.parsed == [srv.reply_json] and eng.json_mode == "none"
        assert [b.get("response_format", {}).get("type") for b in srv.requests] == ["json_schema", "json_object", None]
        assert '"required":["queries"]' in srv.requests[-1]["messages"][-1]["content"]
        [text] = eng.generate([GenerateRequest([user("A query.")])])  # requests without a schema are unchanged
        assert text.ok and "JSON" not in str(srv.requests[-1]["messages"])


def test_judge_keeps_the_answer_to_the_two_words_where_it_can(srv):
    # Token ids given: vLLM's fields restrict the answer token and ask for exactly the two words' logprobs.
    res = make_engine(srv, answer_token_ids={"Yes": 11, "No": 12}).judge([JudgeRequest([user("q p=0.8")])])
    assert res[0].p_yes == pytest.approx(0.8)
    assert srv.requests[-1]["allowed_token_ids"] == [11, 12] and srv.requests[-1]["logprob_token_ids"] == [11, 12]
    res = make_engine(srv, answer_token_ids={"Yes": 11, "No": 12}, answer_tokens="logit_bias").judge(
        [JudgeRequest([user("q p=0.3")])])
    assert res[0].p_yes == pytest.approx(0.3) and srv.requests[-1]["logit_bias"] == {"11": 100, "12": 100}
    # auto, and the server has no /tokenize (404): top_logprobs only, as before.
    res = make_engine(srv).judge([JudgeRequest([user("q p=0.6")])])
    assert res[0].p_yes == pytest.approx(0.6) and "allowed_token_ids" not in srv.requests[-1]
    # an explicit restriction without ids fails the request, saying how to give them
    res = make_engine(srv, answer_tokens="allowed_token_ids").judge([JudgeRequest([user("q")])])
    assert error_kind(res[0].error) == "bad_input" and "answer_token_ids" in res[0].error
