"""The transformers backend on tiny random-weight Qwen2-VL/2.5-VL/3-VL, Qwen2 and Llama models built locally (CPU).

Nothing is downloaded: conftest.py sets HF_HUB_OFFLINE=1 and the models load with local_files_only.
"""

from __future__ import annotations

import io

import pytest

from docrerank.engines import (
    EngineConfig,
    GenerateRequest,
    JudgeRequest,
    SamplingParams,
    build_engine,
    error_kind,
    system,
    user,
)
from docrerank.models.prefix import common_prefix_len, plan_prefix_groups

TOL = 2e-5
INSTRUCTION = "Can this page answer the question? Answer Yes or No.\nQuestion: "
QUERIES = ["What is the total revenue in 2021?", "Which platform is most used?", "How many employees in 2019?",
           "What was the net income?", "Which year?"]


def page(seed: int, size=(112, 140)) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from docrerank.models.tiny import make_tiny_causal_lm, make_tiny_qwen2_vl

    root = tmp_path_factory.mktemp("tiny")
    return {
        "vl": str(make_tiny_qwen2_vl(root / "qwen2vl")),
        "qwen2_5_vl": str(make_tiny_qwen2_vl(root / "qwen2_5_vl", arch="qwen2_5_vl")),
        "qwen3_vl": str(make_tiny_qwen2_vl(root / "qwen3_vl", arch="qwen3_vl")),
        "qwen2": str(make_tiny_causal_lm(root / "qwen2", arch="qwen2")),
        "llama": str(make_tiny_causal_lm(root / "llama", arch="llama")),
    }


def engine_for(path: str, **kw):
    cfg = {"backend": "hf", "model": path, "batch_size": 3, "hf": {"device": "cpu", "local_files_only": True}}
    cfg.update(kw)
    return build_engine(EngineConfig.model_validate(cfg))


@pytest.fixture(scope="module")
def vl(models):
    return engine_for(models["vl"])


def page_requests(pages=(1, 2), queries=QUERIES):
    return [JudgeRequest([user(page(p), INSTRUCTION + q)], id=f"{p}:{q}") for p in pages for q in queries]


def judge_plain(engine, reqs):
    engine.cfg.hf.prefix_reuse = False
    try:
        return engine.judge(reqs)
    finally:
        engine.cfg.hf.prefix_reuse = True


# ------------------------------------------------------------------------------------- prefix planning
def test_plan_prefix_groups():
    a = [1, 2, 3, 9, 9, 4, 5]
    b = [1, 2, 3, 9, 9, 4, 6, 7]
    c = [1, 2, 3, 9, 9, 4]  # all of it is shared with a: the prefix must leave it one token
    groups, rest = plan_prefix_groups([a, b, c, [8, 8]], ["img", "img", "img", "other"], 9, 2)
    assert [(g.indices, g.prefix_len) for g in groups] == [([0, 1, 2], 5)] and rest == [3]
    # The image (token 9) not entirely in the shared prefix: plain path.
    groups, rest = plan_prefix_groups([[1, 9, 9, 2], [1, 9, 8, 3]], ["k", "k"], 9, 1)
    assert groups == [] and rest == [0, 1]
    # Too short a prefix: plain path.
    groups, rest = plan_prefix_groups([[1, 2, 3], [1, 2, 4]], [(), ()], None, 3)
    assert groups == [] and rest == [0, 1]
    assert common_prefix_len([[1, 2], [1, 2, 3], [1, 5]]) == 1


def test_qwen_vl_expands_placeholders_and_pads_left():
    from docrerank.models.qwen_vl import batch_inputs, expand_image_tokens

    assert expand_image_tokens([1, 9, 2, 9, 3], 9, [2, 3]) == [1, 9, 9, 2, 9, 9, 9, 3]
    with pytest.raises(ValueError, match="2 image placeholders for 1 image"):
        expand_image_tokens([9, 9], 9, [4])
    inputs = batch_inputs([[5, 6, 7], [8]], pad_id=0, image_token_id=None)
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]] and "pixel_values" not in inputs


# -------------------------------------------------------------------------------------------- VL judge
def test_vl_judge_batched_equals_one_by_one(vl):
    reqs = page_requests(pages=(1,), queries=QUERIES[:4]) + [JudgeRequest([user("Is 2021 a year? Yes or No.")])]
    batched = judge_plain(vl, reqs)
    single = [judge_plain(vl, [r])[0] for r in reqs]
    for b, s in zip(batched, single):
        assert b.ok and b.method == "logits"
        assert b.p_yes == pytest.approx(s.p_yes, abs=TOL)
    # The model reads the query and the image: answers differ across queries and across pages.
    assert len({round(r.p_yes, 6) for r in batched}) == len(batched)
    other_page = judge_plain(vl, [JudgeRequest([user(page(7), INSTRUCTION + QUERIES[0])])])[0]
    assert abs(other_page.p_yes - batched[0].p_yes) > 1e-6


@pytest.mark.parametrize("arch", ["vl", "qwen2_5_vl", "qwen3_vl"])
def test_vl_prefix_reuse_equals_plain(vl, models, arch):
    vl = vl if arch == "vl" else engine_for(models[arch])
    reqs = page_requests()
    reqs = reqs[::2] + reqs[1::2]  # pages interleaved: grouping must not depend on order
    blue = INSTRUCTION + "Is it blue? Answer True or False."
    reqs.append(JudgeRequest([user(page(1), blue)], yes="True", no="False"))
    reqs.append(JudgeRequest([user("Text only: is this a question? Yes or No.")]))
    before = vl.stats["judge_prefix_requests"]
    reused = vl.judge(reqs)
    assert vl.stats["judge_prefix_requests"] - before == 10  # 2 pages x 5 queries went through the prefix path
    plain = judge_plain(vl, reqs)
    for r, p, q in zip(reused, plain, reqs):
        assert r.ok and p.ok and r.id == q.id
        assert r.p_yes == pytest.approx(p.p_yes, abs=TOL)
        assert r.logprob_yes == pytest.approx(p.logprob_yes, abs=1e-4)
        assert r.prompt_tokens == p.prompt_tokens > 0


def test_prefix_reuse_passes_the_cache_by_its_current_name(models):
    import functools
    import inspect

    import transformers
    from packaging.version import Version

    from docrerank.models.prefix import cache_kwarg

    eng = engine_for(models["qwen2"])
    names = set()
    forward = eng.model.forward

    @functools.wraps(forward)
    def spy(*args, **kwargs):
        names.update(k for k in ("cache", "past_key_values") if kwargs.get(k) is not None)
        return forward(*args, **kwargs)

    eng.model.forward = spy
    res = eng.judge([JudgeRequest([user(INSTRUCTION + q)]) for q in QUERIES[:3]])
    assert all(r.ok for r in res) and eng.stats["judge_prefix_requests"] == 3
    takes_cache = "cache" in inspect.signature(forward).parameters
    assert cache_kwarg(eng.model) == ("cache" if takes_cache else "past_key_values")
    assert names == {cache_kwarg(eng.model)}
    if Version(transformers.__version__) >= Version("5.24"):  # past_key_values deprecated there, gone in 5.40
        assert names == {"cache"}


def test_vl_prefix_reuse_with_system_prompt_and_two_instructions(vl):
    sys_msg = system("You verify whether document pages answer questions.")
    reqs = [JudgeRequest([sys_msg, user(page(3), instr + q)]) for q in QUERIES[:3]
            for instr in (INSTRUCTION, "Does the page contain the answer to: ")]
    reused = vl.judge(reqs)
    plain = judge_plain(vl, reqs)
    assert [r.p_yes for r in reused] == pytest.approx([p.p_yes for p in plain], abs=TOL)


def test_vl_judge_errors_are_per_request(vl, models):
    reqs = [
        JudgeRequest([user(b"\x89PNG broken", "q")]),
        JudgeRequest([user(page(1), INSTRUCTION + QUERIES[0])]),
        JudgeRequest([user("q")], yes="Yes", no="Yesterday"),  # same first token
    ]
    res = vl.judge(reqs)
    assert error_kind(res[0].error) == "bad_input" and "decode" in res[0].error
    assert res[1].ok and 0 < res[1].p_yes < 1
    assert error_kind(res[2].error) == "bad_input"
    short = engine_for(models["vl"], max_model_len=20)
    [too_long] = short.judge([JudgeRequest([user(page(1), INSTRUCTION + QUERIES[0])])])
    assert error_kind(too_long.error) == "prompt_too_long"


# --------------------------------------------------------------------------------------- causal judge
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_causal_judge_batched_prefix_and_single_agree(models, arch):
    eng = engine_for(models[arch])
    sys_msg = system("You are a careful assistant that checks whether a passage answers a question. " * 2)
    reqs = [JudgeRequest([sys_msg, user(f"Passage: revenue table 2021. Question: {q} Answer Yes or No.")])
            for q in QUERIES]
    reused = eng.judge(reqs)
    assert eng.stats["judge_prefix_requests"] == len(reqs)
    plain = judge_plain(eng, reqs)
    single = [judge_plain(eng, [r])[0] for r in reqs]
    for r, p, s in zip(reused, plain, single):
        assert r.p_yes == pytest.approx(p.p_yes, abs=TOL) and p.p_yes == pytest.approx(s.p_yes, abs=TOL)
    [img] = eng.judge([JudgeRequest([user(page(1), "q")])])
    assert error_kind(img.error) == "bad_input" and "text-only" in img.error


# ------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize("kind", ["vl", "qwen2"])
def test_generate_greedy_batched_equals_one_by_one(models, kind):
    eng = engine_for(models[kind])
    prompts = ["Write queries a user might ask about this page.", "Rephrase the question: what is the revenue?",
               "Which year?"]
    reqs = [GenerateRequest([user(page(i), p) if kind == "vl" else user(p)], SamplingParams(max_tokens=6))
            for i, p in enumerate(prompts)]
    batched = eng.generate(reqs)
    single = [eng.generate([r])[0] for r in reqs]
    assert [b.texts for b in batched] == [s.texts for s in single]
    for b in batched:
        assert b.prompt_tokens > 0 and 0 < b.completion_tokens <= 6
        assert b.finish_reasons[0] in ("stop", "length")
        # Random weights rarely stop by themselves: a 6-token answer that hit the limit is a truncation.
        assert (error_kind(b.error) == "truncated") == (b.finish_reasons[0] == "length")


def test_generate_sampling_seed_n_and_stop(models):
    eng = engine_for(models["qwen2"])
    req = GenerateRequest([user("Write a query.")], SamplingParams(temperature=1.0, n=3, seed=7, max_tokens=8))
    a, b = eng.generate([req])[0], eng.generate([req])[0]
    assert len(a.texts) == 3 and a.texts == b.texts
    greedy = eng.generate([GenerateRequest([user("Write a query.")], SamplingParams(max_tokens=8))])[0].text
    stop = greedy[2:4]
    cut = eng.generate([GenerateRequest([user("Write a query.")], SamplingParams(max_tokens=8, stop=(stop,)))])[0]
    assert cut.text == greedy[: greedy.find(stop)] and cut.finish_reasons == ["stop"]


@pytest.mark.parametrize("kind", ["qwen2", "vl"])
def test_generate_different_seeds_share_a_forward_pass(models, kind):
    eng = engine_for(models[kind], batch_size=8)
    calls = []
    real = eng.model.generate
    eng.model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or real(**kw)
    prompts = ["Write a query.", "Write a query.", "Rephrase the question: what is the revenue?", "Which year?"]
    reqs = [GenerateRequest([user(page(i), p) if kind == "vl" else user(p)],
                            SamplingParams(temperature=1.0, top_p=0.95, n=2, seed=100 + i, max_tokens=8))
            for i, p in enumerate(prompts)]
    batched = eng.generate(reqs)
    assert calls == [8]  # 4 requests x 2 samples with 4 different seeds: one forward batch
    alone = [eng.generate([r])[0] for r in reqs]
    assert [b.texts for b in batched] == [a.texts for a in alone]  # a request's samples do not depend on its batch
    assert batched[0].texts != batched[1].texts  # same prompt, different seed
    assert len({t for b in batched for t in b.texts}) > 4  # the two samples of a request are distinct draws


def test_generate_json_and_errors_never_raise(models):
    eng = engine_for(models["vl"], max_model_len=64)
    schema = {"type": "object", "required": ["queries"]}
    reqs = [
        GenerateRequest([user("Return JSON with queries.")], SamplingParams(max_tokens=10), json_schema=schema),
        GenerateRequest([user(page(1), "Describe.")], SamplingParams(max_tokens=10)),  # > 64 tokens with the image
        GenerateRequest([user(b"junk", "Describe.")]),
    ]
    res = eng.generate(reqs)
    # A random model writes no JSON: rejected with the reason after one repair attempt (or truncated).
    assert error_kind(res[0].error) in ("invalid_json", "truncated") and res[0].parsed == [None]
    assert error_kind(res[1].error) == "prompt_too_long"
    assert error_kind(res[2].error) == "bad_input"
