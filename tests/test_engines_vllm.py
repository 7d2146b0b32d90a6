"""The vLLM backend's pure parts (chat messages, sampling parameters, output parsing, error kinds) and the cases a
real engine cannot produce.

The engine on a real ``vllm.LLM`` (vLLM's CPU build) is ``tests/test_engines_vllm_real.py``: structured outputs,
judge logprobs, bad requests, seeds, request grouping, the split of a failed call. A fake ``LLM`` stays here only
where a real one cannot give the case: vLLM < 0.11.1 handing a failed call's requests to the next call
(``test_orphans_of_a_failed_call_are_not_attributed``; 0.32 aborts them), a tokenizer without any chat template that
vLLM loads anyway (``test_no_chat_template_falls_back_to_checkpoint_files``: vLLM itself finds a template file
next to the weights, so a real checkpoint never reaches our fallback), and Mistral's tokenizer
(``test_mistral_format_path``: a Mistral-format checkpoint needs tekken/sentencepiece files this project cannot
make; mistral_common's own parser is checked on our messages below). The output dataclasses in
``test_parse_outputs`` mimic vLLM's to reach the bound and missing-logprobs branches, which the real engine (exact
logprobs by token id) no longer produces.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field

import pytest

from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, SamplingParams, build_engine, \
    error_kind, user
from docrerank.engines import vllm as vb

SCHEMA = {"type": "object", "required": ["queries"]}
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (CI installs it: .ci/install)")


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


def _get(params, name):
    return params[name] if isinstance(params, dict) else getattr(params, name)


class FakeLLM:
    """vLLM's ``LLM`` surface the engine uses: ``get_tokenizer()`` and ``chat(conversations, params, ...)``.

    A judgement answers p(yes) = the ``p=0.x`` written in the prompt (0.7 when none), so tests can check that
    each answer comes back to its own request. ``leak_orphans`` mimics vLLM < 0.11.1: a failed call leaves the
    requests it had added before the bad one, and the next call returns them first.
    """

    def __init__(self, tokenizer, texts=None, leak_orphans=False):
        self.tok = tokenizer
        self.texts = list(texts or [])
        self.calls = []
        self.leak_orphans = leak_orphans
        self.pending = []

    def get_tokenizer(self):
        return self.tok

    def render(self, conv, chat_template):
        flat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else [
            {"type": "image"} if p["type"] in ("image_pil", "image_url") else p for p in m["content"]]} for m in conv]
        return self.tok.apply_chat_template(flat, tokenize=False, add_generation_prompt=True,
                                            chat_template=chat_template)

    def answer(self, prompt, params):
        ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        if _get(params, "max_tokens") == 1:
            y, n = _get(params, "allowed_token_ids")
            m = re.search(r"p=([0-9.]+)", prompt)
            p = float(m.group(1)) if m else 0.7
            lp = {y: Logprob(math.log(p)), n: Logprob(math.log(1 - p)), 5: Logprob(math.log(1e-4))}
            return RequestOutput(ids, [CompletionOutput(0, "Yes", [y], logprobs=[lp])])
        text = self.texts.pop(0) if self.texts else "What is the revenue?"
        return RequestOutput(ids, [CompletionOutput(i, text, [1, 2, 3]) for i in range(_get(params, "n"))])

    def chat(self, conversations, params, **kwargs):
        assert kwargs["add_generation_prompt"] and not kwargs["use_tqdm"] and len(params) == len(conversations)
        chat_template = kwargs.get("chat_template")
        self.calls.append(dict(convs=conversations, params=params, chat_template=chat_template, kwargs=kwargs))
        added = []
        for conv, p in zip(conversations, params):
            prompt = self.render(conv, chat_template)
            if "TOO LONG" in prompt:
                if self.leak_orphans:
                    self.pending += added
                raise ValueError("The decoder prompt (length 99999) is longer than the maximum model length of 4096.")
            added.append(self.answer(prompt, p))
        outs, self.pending = self.pending + added, []
        return outs


@pytest.fixture(scope="module")
def tok():
    from docrerank.models.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer()


def png(color="white") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), color).save(buf, format="PNG")
    return buf.getvalue()


def engine(llm, **cfg):
    return vb.VLLMEngine(EngineConfig(backend="vllm", model="m", **cfg), llm=llm)


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vllm
    with pytest.raises(ImportError, match="pip install"):
        build_engine(EngineConfig(backend="vllm", model="Qwen/Qwen2-VL-2B-Instruct"))


def test_version_floor():
    for ok in ("0.11.1", "0.32.0", "0.12.0rc1", "0.11.2.dev3+gabc", "1.0.0"):
        vb.check_version(ok)
    for old in ("0.11.0", "0.10.2", "0.6.3.post1"):
        with pytest.raises(ImportError, match=r"vllm >= 0\.11\.1"):
            vb.check_version(old)


def test_llm_kwargs_per_model_family():
    cfg = EngineConfig(backend="vllm", model="m", max_model_len=8192, min_pixels=3136,
                       vllm={"max_num_seqs": 64, "engine_kwargs": {"enforce_eager": True, "seed": 5}})
    kw = vb.llm_kwargs(cfg, "qwen2_5_vl", multimodal=True)
    assert kw["enable_prefix_caching"] is True and kw["max_model_len"] == 8192 and kw["max_num_seqs"] == 64
    assert kw["mm_processor_kwargs"] == {"max_pixels": 802_816, "min_pixels": 3136}
    assert kw["limit_mm_per_prompt"] == {"image": 1} and "tokenizer_mode" not in kw
    assert kw["enforce_eager"] is True and kw["seed"] == 5  # engine_kwargs win
    assert "mm_processor_kwargs" not in vb.llm_kwargs(cfg, "qwen2", multimodal=False)
    # Pixtral in Mistral's format: vLLM's own tokenizer/config/weights loaders, no Qwen pixel kwargs.
    pix = EngineConfig(backend="vllm", model="mistralai/Pixtral-12B-2409",
                       vllm={"tokenizer_mode": "mistral", "config_format": "mistral", "load_format": "mistral"})
    kw = vb.llm_kwargs(pix, "mistral", multimodal=True)
    assert (kw["tokenizer_mode"], kw["config_format"], kw["load_format"]) == ("mistral",) * 3
    assert kw["limit_mm_per_prompt"] == {"image": 1} and "mm_processor_kwargs" not in kw


def test_kv_cache_is_a_fixed_size_on_cpu_and_checked_against_free_ram(monkeypatch):
    """On a GPU vLLM sizes the KV cache from its memory share; on the CPU build the size is fixed (vLLM's own CPU
    rule subtracts the engine process's size from the share, which left CI's engine a negative cache), and a size
    that does not fit in the free RAM fails before vLLM starts, naming the options."""
    gib = 2**30
    assert "kv_cache_memory_bytes" not in vb.llm_kwargs(EngineConfig(backend="vllm", model="m"), "qwen2", False)
    fixed = EngineConfig(backend="vllm", model="m", vllm={"kv_cache_gib": 0.25})
    assert vb.llm_kwargs(fixed, "qwen2", False)["kv_cache_memory_bytes"] == gib // 4
    monkeypatch.setattr(vb, "node_ram_bytes", lambda: (24 * gib, 10 * gib))
    share = EngineConfig(backend="vllm", model="m", vllm={"cpu": True, "gpu_memory_utilization": 0.04})
    assert vb.llm_kwargs(share, "qwen2", False)["kv_cache_memory_bytes"] == int(0.04 * 24 * gib)
    vb.check_cpu_kv_cache(vb.llm_kwargs(share, "qwen2", False))  # 0.96 GiB of 10 free
    too_big = EngineConfig(backend="vllm", model="m", vllm={"cpu": True})  # 0.9 x 24 GiB > 10 GiB free
    with pytest.raises(ValueError, match=r"21.60 GiB does not fit in the 10.00 GiB .*vllm.kv_cache_gib"):
        vb.check_cpu_kv_cache(vb.llm_kwargs(too_big, "qwen2", False))
    # engine_kwargs win over the derived size, and the check reads what vLLM gets
    small = EngineConfig(backend="vllm", model="m", vllm={"cpu": True, "engine_kwargs": {"kv_cache_memory_bytes": gib}})
    vb.check_cpu_kv_cache(vb.llm_kwargs(small, "qwen2", False))
    vb.check_cpu_kv_cache(vb.llm_kwargs(EngineConfig(backend="vllm", model="m"), "qwen2", False))  # GPU: vLLM sizes it


def test_node_ram_is_read_from_proc_meminfo():
    total, available = vb.node_ram_bytes()
    assert 0 < available <= total


def test_checkpoint_info(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl", "vision_config": {}}')
    assert vb.checkpoint_info(str(tmp_path)) == ("qwen2_vl", True)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    assert vb.checkpoint_info(str(tmp_path)) == ("qwen2", False)
    (tmp_path / "config.json").unlink()
    (tmp_path / "params.json").write_text('{"dim": 5120, "vision_encoder": {"image_size": 1024}}')
    assert vb.checkpoint_info(str(tmp_path)) == ("mistral", True)
    (tmp_path / "params.json").unlink()
    assert vb.checkpoint_info(str(tmp_path)) == (None, False)


def test_chat_messages_image_first_decoded_once():
    cache = vb.ImageCache(4)
    page = png()
    convs = [vb.chat_messages([user(f"Question {k}?", page)], cache, mistral=False) for k in range(24)]
    assert cache.decoded == 1  # 24 checks of one page, one decode
    first = convs[0][0]["content"]
    assert [p["type"] for p in first] == ["image_pil", "text"]  # the image moves before the text
    assert first[0]["uuid"] == user(page).parts[0].key() and first[0]["image_pil"].size == (20, 10)
    assert all(c[0]["content"][0]["image_pil"] is first[0]["image_pil"] for c in convs)
    mistral = vb.chat_messages([user(page, "Question?")], cache, mistral=True)[0]["content"]
    assert mistral[0]["type"] == "image_url" and mistral[0]["image_url"]["url"].startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="decode"):
        vb.chat_messages([user(b"junk", "q")], cache, mistral=False)
    for k in range(6):  # bounded
        vb.chat_messages([user(png(color=(k, 0, 0)))], cache, mistral=False)
    assert len(cache._items) == 4


@needs_vllm
def test_vllm_parses_our_parts():
    from vllm.renderers.chat_utils import _parse_chat_message_content_mm_part

    conv = vb.chat_messages([user(png(), "Question?")], vb.ImageCache(2), mistral=False)
    image, text = conv[0]["content"]
    kind, value = _parse_chat_message_content_mm_part(image)
    assert kind == "image_pil" and value is image["image_pil"]
    assert _parse_chat_message_content_mm_part(text) == ("text", "Question?")
    url = vb.chat_messages([user(png())], vb.ImageCache(2), mistral=True)[0]["content"][0]
    assert _parse_chat_message_content_mm_part(url) == ("image_url", url["image_url"]["url"])


@needs_vllm
def test_llm_kwargs_are_engine_args():
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    cfg = EngineConfig(backend="vllm", model="m", max_model_len=4096, vllm={"max_num_seqs": 8,
                       "tokenizer_mode": "mistral", "config_format": "mistral", "load_format": "mistral"})
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert set(vb.llm_kwargs(cfg, "qwen2_vl", multimodal=True)) <= fields


def test_sampling_kwargs():
    req = GenerateRequest([user("q")], SamplingParams(temperature=0.7, top_p=0.9, max_tokens=50, n=2, stop=("\n",)),
                          json_schema=SCHEMA)
    kw = vb.sampling_kwargs(req, default_seed=11)
    assert kw == dict(temperature=0.7, top_p=0.9, max_tokens=50, n=2, seed=11, stop=["\n"], structured_json=SCHEMA)
    assert vb.sampling_kwargs(GenerateRequest([user("q")]), 11)["seed"] is None  # greedy needs no seed
    jk = vb.judge_sampling_kwargs((7, 9), 20)
    assert jk == dict(temperature=0.0, max_tokens=1, logprobs=20, allowed_token_ids=[7, 9])
    assert vb.judge_sampling_kwargs((7, 9), 20, by_id=True) == dict(  # vLLM >= 0.32: exactly the two words
        temperature=0.0, max_tokens=1, allowed_token_ids=[7, 9], logprob_token_ids=[7, 9])


@needs_vllm
def test_real_sampling_params():
    import vllm

    req = GenerateRequest([user("q")], SamplingParams(temperature=0.7, max_tokens=50, n=2), json_schema=SCHEMA)
    sp = vb.make_sampling_params(vllm, vb.sampling_kwargs(req, 3))
    assert isinstance(sp, vllm.SamplingParams) and sp.n == 2 and sp.seed == 3
    assert sp.structured_outputs.json == SCHEMA
    jp = vb.make_sampling_params(vllm, vb.judge_sampling_kwargs((7, 9), 20))
    assert jp.allowed_token_ids == [7, 9] and jp.logprobs == 20 and jp.max_tokens == 1


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


def test_orphans_of_a_failed_call_are_not_attributed(tok):
    # vLLM < 0.11.1 kept the requests a failed call had added; the next call returned them too, first.
    llm = FakeLLM(tok, leak_orphans=True)
    eng = engine(llm)
    reqs = [JudgeRequest([user(f"q{k} p=0.{k + 1}")], id=str(k)) for k in range(4)]
    reqs[2] = JudgeRequest([user("TOO LONG")], id="2")
    res = eng.judge(reqs)
    assert error_kind(res[2].error) == "prompt_too_long"
    assert [res[k].p_yes for k in (0, 1, 3)] == pytest.approx([0.1, 0.2, 0.4])


def test_no_chat_template_falls_back_to_checkpoint_files(tmp_path, tok):
    from docrerank.models.tiny import QWEN2_VL_CHAT_TEMPLATE

    from transformers import AutoTokenizer

    tok.save_pretrained(str(tmp_path / "t"))
    bare = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    bare.chat_template = None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}))
    llm = FakeLLM(bare)
    eng = vb.VLLMEngine(EngineConfig(backend="vllm", model=str(tmp_path)), llm=llm)
    assert eng.chat_template == QWEN2_VL_CHAT_TEMPLATE
    assert eng.judge([JudgeRequest([user(png(), "Yes or No?")])])[0].ok
    assert llm.calls[0]["chat_template"] == QWEN2_VL_CHAT_TEMPLATE
    (tmp_path / "chat_template.json").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        vb.VLLMEngine(EngineConfig(backend="vllm", model=str(tmp_path)), llm=FakeLLM(bare))


class MistralTokenizer:
    """Stands in for vLLM's MistralTokenizer (recognised by class name): no chat template, renders chats itself."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text, add_special_tokens=False):
        return self._tok.encode(text, add_special_tokens=add_special_tokens)


def test_mistral_format_path(tok):
    class MistralLLM(FakeLLM):
        def render(self, conv, chat_template):  # mistral_common takes the OpenAI messages as they are
            assert chat_template is None
            return json.dumps([{k: v for k, v in m.items()} for m in conv])[:2000]

    llm = MistralLLM(MistralTokenizer(tok))
    llm.tok = tok  # token counting in the fake
    llm.get_tokenizer = lambda: MistralTokenizer(tok)
    eng = engine(llm, vllm={"tokenizer_mode": "mistral"})
    assert eng.mistral and eng.chat_template is None
    res = eng.generate([GenerateRequest([user(png(), "Write a question.")])])
    assert res[0].ok, res[0].error
    (image, text), = [m["content"] for m in llm.calls[0]["convs"][0]]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
    assert text == {"type": "text", "text": "Write a question."}


@pytest.mark.skipif(importlib.util.find_spec("mistral_common") is None, reason="mistral_common is not installed")
def test_mistral_common_accepts_our_messages():
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    conv = vb.chat_messages([user(png(), "Write a question about this page.")], vb.ImageCache(1), mistral=True)
    req = ChatCompletionRequest.from_openai(conv)
    chunks = req.messages[0].content
    assert [type(c).__name__ for c in chunks] == ["ImageURLChunk", "TextChunk"]
    pil = vb.chat_messages([user(png(), "q")], vb.ImageCache(1), mistral=False)  # what HF tokenizers get
    with pytest.raises(ValueError):
        ChatCompletionRequest.from_openai(pil)
