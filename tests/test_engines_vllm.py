"""The vLLM backend up to the ``LLM`` call (CPU): prompts, sampling parameters, output parsing, errors.

A fake ``LLM`` with vLLM's output shapes stands in for the GPU engine; the tokenizer is the tiny local one
with the Qwen2-VL chat template.
"""

from __future__ import annotations

import importlib.util
import io
import math
from dataclasses import dataclass, field

import pytest

from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, \
    count_errors, error_kind, user
from docrerank.engines import vllm as vb

SCHEMA = {"type": "object", "required": ["queries"]}


@dataclass
class Logprob:
    logprob: float
    rank: int = 1
    decoded_token: str = ""


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    finish_reason: str = "stop"
    logprobs: list = None


@dataclass
class RequestOutput:
    prompt_token_ids: list
    outputs: list = field(default_factory=list)


class FakeLLM:
    """vLLM's ``LLM`` surface used by the engine: get_tokenizer() and generate(prompts, params, use_tqdm)."""

    def __init__(self, tokenizer, texts=None):
        self.tok = tokenizer
        self.texts = list(texts or [])
        self.calls = []

    def get_tokenizer(self):
        return self.tok

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        if any("TOO LONG" in p["prompt"] for p in prompts):
            raise ValueError("The decoder prompt (length 99999) is longer than the maximum model length of 4096.")
        outs = []
        for p, s in zip(prompts, params):
            ids = self.tok(p["prompt"], add_special_tokens=False)["input_ids"]
            if s.get("max_tokens") == 1:  # a judgement: logprobs of both allowed tokens and a distractor
                y, n = s["allowed_token_ids"]
                lp = {y: Logprob(math.log(0.7)), n: Logprob(math.log(0.2)), 5: Logprob(math.log(0.1))}
                outs.append(RequestOutput(ids, [CompletionOutput(0, "Yes", [y], logprobs=[lp])]))
            else:
                text = self.texts.pop(0) if self.texts else "What is the revenue?"
                outs.append(RequestOutput(ids, [CompletionOutput(i, text, [1, 2, 3]) for i in range(s["n"])]))
        return outs


@pytest.fixture(scope="module")
def tok():
    from docrerank.testing.tiny_models import make_tiny_tokenizer

    return make_tiny_tokenizer()


def png(color="white") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_says_how_to_install():
    with pytest.raises(ImportError, match="pip install"):
        build_engine(EngineConfig(backend="vllm", model="Qwen/Qwen2-VL-2B-Instruct"))


def test_llm_kwargs():
    cfg = EngineConfig(backend="vllm", model="m", max_model_len=8192, min_pixels=3136,
                       vllm={"max_num_seqs": 64, "engine_kwargs": {"enforce_eager": True, "seed": 5}})
    kw = vb.llm_kwargs(cfg, multimodal=True)
    assert kw["enable_prefix_caching"] is True and kw["max_model_len"] == 8192 and kw["max_num_seqs"] == 64
    assert kw["mm_processor_kwargs"] == {"max_pixels": 802_816, "min_pixels": 3136}
    assert kw["limit_mm_per_prompt"] == {"image": 1}
    assert kw["enforce_eager"] is True and kw["seed"] == 5  # engine_kwargs win
    assert "mm_processor_kwargs" not in vb.llm_kwargs(cfg, multimodal=False)


def test_is_multimodal_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl", "vision_config": {}}')
    assert vb.is_multimodal_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert not vb.is_multimodal_checkpoint(str(tmp_path))


def test_build_prompt_one_placeholder_per_image(tok):
    p = vb.build_prompt(tok, [user(png(), "Can this page answer? Answer Yes or No.")])
    assert p["prompt"].count("<|vision_start|><|image_pad|><|vision_end|>") == 1
    assert p["prompt"].endswith("<|im_start|>assistant\n")
    assert p["multi_modal_data"]["image"].size == (20, 10)
    assert "multi_modal_data" not in vb.build_prompt(tok, [user("text only")])
    with pytest.raises(ValueError, match="decode"):
        vb.build_prompt(tok, [user(b"junk", "q")])


def test_sampling_kwargs():
    req = GenerateRequest([user("q")], SamplingParams(temperature=0.7, top_p=0.9, max_tokens=50, n=2, stop=("\n",)),
                          json_schema=SCHEMA)
    kw = vb.sampling_kwargs(req, default_seed=11)
    assert kw == dict(temperature=0.7, top_p=0.9, max_tokens=50, n=2, seed=11, stop=["\n"], structured_json=SCHEMA)
    assert vb.sampling_kwargs(GenerateRequest([user("q")]), 11)["seed"] is None  # greedy needs no seed
    jk = vb.judge_sampling_kwargs((7, 9), 20)
    assert jk == dict(temperature=0.0, max_tokens=1, logprobs=20, allowed_token_ids=[7, 9])


def test_parse_outputs():
    raw = vb.parse_generation(RequestOutput([1, 2, 3], [CompletionOutput(1, "b", [4], "length"),
                                                        CompletionOutput(0, "a", [5, 6], None)]))
    assert raw.texts == ["a", "b"] and raw.finish_reasons == ["stop", "length"]
    assert raw.prompt_tokens == 3 and raw.completion_tokens == 3
    out = RequestOutput([1], [CompletionOutput(0, "Yes", [7], logprobs=[{7: Logprob(-0.5), 9: -1.5}])])
    j = vb.parse_judgement(out, (7, 9))
    assert j.method == "logprobs" and j.p_yes == pytest.approx(1 / (1 + math.exp(-1.0)))
    only_no = RequestOutput([1], [CompletionOutput(0, "No", [9], logprobs=[{9: -0.1, 3: -6.0}])])
    bound = vb.parse_judgement(only_no, (7, 9))
    assert bound.method == "logprobs_bound" and bound.logprob_yes == -6.0 and bound.p_yes < 0.01
    none = vb.parse_judgement(RequestOutput([1], [CompletionOutput(0, "x", [3], logprobs=None)]), (7, 9))
    assert error_kind(none.error) == "missing_logprobs"


def test_engine_with_fake_llm(tok):
    llm = FakeLLM(tok, texts=["not json", "What is the revenue?", '{"queries": ["q1"]}'])
    eng = vb.VLLMEngine(EngineConfig(backend="vllm", model="m"), llm=llm)
    res = eng.generate([GenerateRequest([user("JSON please")], json_schema=SCHEMA), GenerateRequest([user("q")])])
    assert res[0].ok and res[0].repaired == 1 and res[0].parsed == [{"queries": ["q1"]}]
    assert res[1].ok and res[1].text == "What is the revenue?"
    assert llm.calls[0][1][0]["structured_json"] == SCHEMA
    judged = eng.judge([JudgeRequest([user(png(), "Answer Yes or No.")], id="a"),
                        JudgeRequest([user("q")], yes="True", no="False", id="b")])
    assert [j.id for j in judged] == ["a", "b"]
    assert [j.p_yes for j in judged] == pytest.approx([0.7 / 0.9] * 2)
    yes, no = tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("False")
    assert llm.calls[-1][1][1]["allowed_token_ids"] == [yes, no]


def test_requests_of_a_page_are_sent_together(tok):
    assert vb.group_order(["a", "b", "a", (), "b", "a"]) == [0, 2, 5, 1, 4, 3]
    llm = FakeLLM(tok)
    eng = vb.VLLMEngine(EngineConfig(backend="vllm", model="m"), llm=llm)
    pages = [png(), png(color="black")]
    reqs = [JudgeRequest([user(pages[k % 2], f"Question {k}? Yes or No.")], id=str(k)) for k in range(6)]
    res = eng.judge(reqs)
    assert [r.id for r in res] == [str(k) for k in range(6)]  # results come back in request order
    sent = [p["prompt"].split("Question ")[1][0] for p in llm.calls[-1][0]]
    assert sent == ["0", "2", "4", "1", "3", "5"]


def test_one_bad_request_does_not_fail_the_batch(tok):
    eng = vb.VLLMEngine(EngineConfig(backend="vllm", model="m"), llm=FakeLLM(tok))
    res = eng.judge([JudgeRequest([user("fine")]), JudgeRequest([user("TOO LONG")]), JudgeRequest([user(b"x", "q")])])
    assert res[0].ok and error_kind(res[1].error) == "prompt_too_long" and error_kind(res[2].error) == "bad_input"
    gen = eng.generate([GenerateRequest([user("TOO LONG")]), GenerateRequest([user("fine")])])
    assert count_errors(gen) == {"prompt_too_long": 1, "ok": 1}
