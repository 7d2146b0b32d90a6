"""vLLM backend (GPU, production): ``vllm.LLM`` in-process, one engine per Ray actor.

Why ``vllm.LLM`` inside our own actor rather than ``ray.data.llm.build_processor``: judgements need
per-request ``allowed_token_ids`` and next-token logprobs read by token id, and pipelines must see the same
``generate``/``judge`` interface on every backend. ``LLM.generate`` receives a whole Ray batch at once and
schedules it with continuous batching, so the GPU stays busy within a batch; with prefix caching on, the
requests of one page (kept together in a batch by the pipelines) share the cached image prefix.
Prompts are rendered here with the checkpoint's chat template (one image placeholder per image, which vLLM
expands), so everything up to the ``LLM`` call is plain Python and is tested on CPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from docrerank.engines.base import TextEngine
from docrerank.engines.config import EngineConfig
from docrerank.engines.messages import image_keys, images_of, to_template_dicts
from docrerank.engines.parsing import p_yes_from_logprobs
from docrerank.engines.requests import (
    GenerateRequest,
    JudgeRequest,
    JudgeResult,
    RawGeneration,
    error_kind,
    make_error,
)

MISSING_VLLM = (
    "the 'vllm' backend needs the vllm package, which is not installed: install it on a GPU machine with "
    "`pip install 'docrerank[gpu]'` (or `pip install vllm`), or choose backend 'hf' or 'http'"
)


def import_vllm():
    """Import vllm, or raise ImportError saying how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(MISSING_VLLM) from err
    return vllm


def is_multimodal_checkpoint(model: str) -> bool:
    """True when the checkpoint's config.json has a vision config (local paths; hub names via the cache)."""
    import json

    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "config.json"))
        except Exception:  # noqa: BLE001 - unknown: let vLLM decide
            return False
    return "vision_config" in json.loads(path.read_text())


def llm_kwargs(cfg: EngineConfig, multimodal: bool) -> dict:
    """Keyword arguments for ``vllm.LLM`` from the engine config (``vllm.engine_kwargs`` win)."""
    o = cfg.vllm
    kw: dict[str, Any] = dict(
        model=cfg.model,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        tensor_parallel_size=o.tensor_parallel_size,
        gpu_memory_utilization=o.gpu_memory_utilization,
        enable_prefix_caching=o.enable_prefix_caching,
        seed=cfg.seed,
        max_logprobs=max(20, o.judge_top_logprobs),
    )
    if cfg.max_model_len:
        kw["max_model_len"] = cfg.max_model_len
    if o.max_num_seqs:
        kw["max_num_seqs"] = o.max_num_seqs
    if multimodal:
        pixels = {"max_pixels": cfg.max_pixels}
        if cfg.min_pixels:
            pixels["min_pixels"] = cfg.min_pixels
        kw.update(limit_mm_per_prompt={"image": 1}, mm_processor_kwargs=pixels)
    kw.update(o.engine_kwargs)
    return kw


def build_prompt(tokenizer: Any, messages: Sequence) -> dict:
    """vLLM prompt dict: chat-template text (one placeholder per image) and the decoded PIL images."""
    text = tokenizer.apply_chat_template(to_template_dicts(messages), tokenize=False, add_generation_prompt=True)
    prompt: dict[str, Any] = {"prompt": text}
    images = [p.to_pil() for p in images_of(messages)]
    if images:
        prompt["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
    return prompt


def sampling_kwargs(req: GenerateRequest, default_seed: int) -> dict:
    """``SamplingParams`` keyword arguments of a generate request; ``json_schema`` -> ``structured_json``."""
    s = req.sampling
    kw: dict[str, Any] = dict(
        temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n,
        seed=s.seed if s.seed is not None else (default_seed if s.temperature > 0 else None),
    )
    if s.stop:
        kw["stop"] = list(s.stop)
    if req.json_schema is not None:
        kw["structured_json"] = req.json_schema
    return kw


def judge_sampling_kwargs(token_pair: Sequence[int], top_logprobs: int) -> dict:
    """One greedy token restricted to the two answer tokens, with top logprobs (raw, before the restriction)."""
    return dict(temperature=0.0, max_tokens=1, logprobs=top_logprobs, allowed_token_ids=list(token_pair))


def make_sampling_params(vllm: Any, kw: dict):
    """``vllm.SamplingParams`` from ``sampling_kwargs`` output (structured outputs, old or new API)."""
    kw = dict(kw)
    schema = kw.pop("structured_json", None)
    if schema is not None:
        try:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(json=schema)
        except ImportError:  # vLLM < 0.11
            from vllm.sampling_params import GuidedDecodingParams

            kw["guided_decoding"] = GuidedDecodingParams(json=schema)
    return vllm.SamplingParams(**kw)


def answer_token_ids(tokenizer: Any, yes: str, no: str) -> tuple[int, int]:
    """First token ids of the two answer words; ValueError when they coincide."""
    y = tokenizer.encode(yes, add_special_tokens=False)
    n = tokenizer.encode(no, add_special_tokens=False)
    if not y or not n or y[0] == n[0]:
        raise ValueError(f"answer words {yes!r}/{no!r} must start with different tokens, got {y[:1]}/{n[:1]}")
    return y[0], n[0]


def group_order(keys: Sequence[Any]) -> list[int]:
    """Indices that put equal keys next to each other, groups in order of first appearance (stable).

    vLLM schedules first come, first served: requests of one page submitted together share its cached prefix.
    """
    first: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    return sorted(range(len(keys)), key=lambda i: (first[keys[i]], i))


def parse_generation(out: Any) -> RawGeneration:
    """A ``vllm.RequestOutput`` -> texts, finish reasons ("stop"/"length"), token counts."""
    outputs = sorted(out.outputs, key=lambda o: o.index)
    return RawGeneration(
        texts=[o.text for o in outputs],
        finish_reasons=["length" if o.finish_reason == "length" else "stop" for o in outputs],
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=sum(len(o.token_ids) for o in outputs),
    )


def parse_judgement(out: Any, token_pair: Sequence[int]) -> JudgeResult:
    """P(yes) from the first generated position's logprobs, read by token id.

    Both ids present: exact. One missing from the top-k: bounded by the smallest returned logprob
    (method "logprobs_bound"). None: a ``missing_logprobs`` error.
    """
    prompt_tokens = len(out.prompt_token_ids or [])
    steps = out.outputs[0].logprobs if out.outputs else None
    if not steps:
        return JudgeResult(error=make_error("missing_logprobs", "vLLM returned no logprobs"),
                           prompt_tokens=prompt_tokens)
    top = {int(t): float(getattr(lp, "logprob", lp)) for t, lp in steps[0].items()}
    top = {t: v for t, v in top.items() if not math.isnan(v)}
    ly, ln = top.get(token_pair[0]), top.get(token_pair[1])
    if ly is None and ln is None:
        return JudgeResult(error=make_error("missing_logprobs", "neither answer token among the logprobs"),
                           prompt_tokens=prompt_tokens)
    method = "logprobs"
    if ly is None or ln is None:
        floor = min(top.values())
        ly, ln, method = (floor if ly is None else ly), (floor if ln is None else ln), "logprobs_bound"
    return JudgeResult(p_yes=p_yes_from_logprobs(ly, ln), logprob_yes=ly, logprob_no=ln, method=method,
                       prompt_tokens=prompt_tokens)


class VLLMEngine(TextEngine):
    """Engine on ``vllm.LLM``; ``llm`` may be passed in (an existing LLM, or a fake in tests)."""

    def __init__(self, cfg: EngineConfig, llm: Any = None):
        super().__init__()
        self.cfg = cfg
        self.json_repair, self.reject_refusals = cfg.json_repair, cfg.reject_refusals
        self._vllm = import_vllm() if llm is None else None
        self.llm = llm if llm is not None else self._vllm.LLM(**llm_kwargs(cfg, is_multimodal_checkpoint(cfg.model)))
        self.tok = self.llm.get_tokenizer()

    def _params(self, kw: dict):
        return kw if self._vllm is None else make_sampling_params(self._vllm, kw)

    def _run(self, prompts: list, params: list, keys: list) -> list:
        """Outputs (or the exception of a failed request) in input order; requests of a page sent together."""
        order = group_order(keys)
        prompts, params = [prompts[i] for i in order], [params[i] for i in order]
        # vLLM validates a whole call up front (e.g. a prompt over max_model_len raises for all of them):
        # on failure, retry one by one so that only the bad request fails.
        try:
            outs = list(self.llm.generate(prompts, params, use_tqdm=False))
        except Exception:  # noqa: BLE001
            outs = []
            for p, s in zip(prompts, params):
                try:
                    outs.append(self.llm.generate([p], [s], use_tqdm=False)[0])
                except Exception as err:  # noqa: BLE001
                    outs.append(err)
        back: list[Any] = [None] * len(order)
        for pos, i in enumerate(order):
            back[i] = outs[pos]
        return back

    @staticmethod
    def _error(err: Exception) -> str:
        msg = f"{type(err).__name__}: {err}"[:300]
        too_long = "longer than the maximum model length" in str(err) or "max_model_len" in str(err)
        return make_error("prompt_too_long" if too_long else "engine_error", msg)

    def _generate_raw(self, requests: Sequence[GenerateRequest]) -> list[RawGeneration]:
        raws: list[Optional[RawGeneration]] = [None] * len(requests)
        todo, prompts, params, keys = [], [], [], []
        for i, req in enumerate(requests):
            try:
                prompts.append(build_prompt(self.tok, req.messages))
            except ValueError as err:
                raws[i] = RawGeneration(error=make_error("bad_input", str(err)))
                continue
            params.append(self._params(sampling_kwargs(req, self.cfg.seed)))
            keys.append(image_keys(req.messages))
            todo.append(i)
        for i, out in zip(todo, self._run(prompts, params, keys)):
            raws[i] = RawGeneration(error=self._error(out)) if isinstance(out, Exception) else parse_generation(out)
        return raws

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """P(yes) per request from the logprobs of one restricted greedy token."""
        results: list[Optional[JudgeResult]] = [None] * len(requests)
        todo, prompts, params, pairs, keys = [], [], [], [], []
        for i, req in enumerate(requests):
            try:
                pair = answer_token_ids(self.tok, req.yes, req.no)
                prompts.append(build_prompt(self.tok, req.messages))
            except ValueError as err:
                results[i] = JudgeResult(error=make_error("bad_input", str(err)))
                continue
            params.append(self._params(judge_sampling_kwargs(pair, self.cfg.vllm.judge_top_logprobs)))
            pairs.append(pair)
            keys.append(image_keys(req.messages))
            todo.append(i)
        for i, pair, out in zip(todo, pairs, self._run(prompts, params, keys)):
            failed = isinstance(out, Exception)
            results[i] = JudgeResult(error=self._error(out)) if failed else parse_judgement(out, pair)
        for req, res in zip(requests, results):
            res.id = req.id
        self.stats.update("judge_" + (error_kind(r.error) or "ok") for r in results)
        return results

    def close(self) -> None:
        """Drop the engine (frees GPU memory once collected)."""
        self.llm = None
