"""vLLM backend (GPU, production): ``vllm.LLM`` in-process, one engine per Ray actor.

Why our own actor around ``vllm.LLM`` rather than ``ray.data.llm`` processors: see ``docs/engines.md``
(one model serves several stages, judgements read logprobs by token id, one interface on every backend).

Prompts are rendered by vLLM itself through ``LLM.chat`` with OpenAI-style messages, so every model family vLLM
supports works, Mistral-format checkpoints (``vllm.tokenizer_mode: mistral``) included. Each turn's image comes
before its text, so the requests of one page share their longest token prefix (prefix caching). For HF tokenizers
the image is passed decoded (``image_pil``) with its content hash as vLLM's media ``uuid``: the checks of one page
decode it once (bounded cache) and vLLM's processor cache recognises it; Mistral's tokenizer takes only
``image_url`` parts, so there the page goes as a data URL. The chat template follows the one rule of every engine
(``models.hub.resolve_chat_template``). ``max_pixels``/``min_pixels`` go only to models whose processor takes
them (Qwen-VL). Sampling parameters are validated per request by ``vllm.SamplingParams``: a value vLLM rejects
fails that request (``bad_input``), not the batch. A call that fails is split in halves until the bad request
is alone; vLLM >= 0.11.1 aborts the requests of a failed call, and the output count is checked besides. An engine
whose core process died (vLLM's ``EngineDeadError``) raises ``engines.base.EngineDeadError`` for that call and every
later one: a dead engine is never a per-request error (a pool's actor then exits and Ray restarts it).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any, Optional, Sequence

from docrerank.engines.base import EngineDeadError, TextEngine
from docrerank.engines.config import EngineConfig, VLLMOptions
from docrerank.engines.messages import ImagePart, image_keys, to_openai_dicts
from docrerank.engines.parsing import p_yes_from_logprobs
from docrerank.engines.requests import (
    GenerateRequest,
    JudgeRequest,
    JudgeResult,
    RawGeneration,
    error_kind,
    make_error,
)
from docrerank.models.hub import hub_offline, read_checkpoint_json, resolve_chat_template

log = logging.getLogger(__name__)

VLLM_FLOOR = (0, 11, 1)
"""Oldest vLLM the engine runs on: from 0.11.1 a failed ``LLM`` call aborts the requests it had added, so a
later call cannot return them (and attribute one request's output to another)."""

MISSING_VLLM = (
    "the 'vllm' backend needs the vllm package, which is not installed: install it on a GPU machine with "
    "`pip install 'docrerank[gpu]'` (or `pip install vllm`), or choose backend 'hf' or 'http'"
)

PIXEL_KWARGS_MODELS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""Model types whose vLLM processor takes ``max_pixels``/``min_pixels``."""


def import_vllm():
    """Import vllm, or raise ImportError saying how to get it (or that it is older than ``VLLM_FLOOR``)."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(MISSING_VLLM) from err
    check_version(getattr(vllm, "__version__", "0"))
    return vllm


def check_version(version: str) -> None:
    """ImportError when ``version`` is older than ``VLLM_FLOOR`` (dev builds of a newer release pass)."""
    nums = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        nums.append(int(digits) if digits else 0)
    if tuple(nums) < VLLM_FLOOR:
        floor = ".".join(map(str, VLLM_FLOOR))
        raise ImportError(f"vllm {version} is installed; the 'vllm' backend needs vllm >= {floor} (older versions "
                          "can hand a failed call's requests to the next call): `pip install -U vllm`")


def checkpoint_info(model: str) -> tuple[Optional[str], bool]:
    """(model_type, multimodal) from the checkpoint's ``config.json``, or from ``params.json`` for a Mistral-format
    checkpoint (model_type "mistral"); (None, False) when neither can be read (vLLM then decides)."""
    local_only = hub_offline()
    cfg = read_checkpoint_json(model, "config.json", local_only)
    if cfg is not None:
        return cfg.get("model_type"), "vision_config" in cfg
    params = read_checkpoint_json(model, "params.json", local_only)
    if params is not None:
        return "mistral", "vision_encoder" in params or "multimodal" in params
    return None, False


def llm_kwargs(cfg: EngineConfig, model_type: Optional[str], multimodal: bool) -> dict:
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
    kv_bytes = kv_cache_bytes(o)
    if kv_bytes is not None:
        kw["kv_cache_memory_bytes"] = kv_bytes
    for key in ("tokenizer_mode", "config_format", "load_format"):
        if getattr(o, key) != "auto":
            kw[key] = getattr(o, key)
    if cfg.max_model_len:
        kw["max_model_len"] = cfg.max_model_len
    if o.max_num_seqs:
        kw["max_num_seqs"] = o.max_num_seqs
    if multimodal:
        kw["limit_mm_per_prompt"] = {"image": 1}
        pixels = processor_kwargs(model_type, cfg)
        if pixels:
            kw["mm_processor_kwargs"] = pixels
    kw.update(o.engine_kwargs)
    return kw


def node_ram_bytes() -> tuple[int, int]:
    """(total, available) RAM of this node in bytes, from /proc/meminfo (what vLLM's CPU worker also reads)."""
    info: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    return info["MemTotal"], info.get("MemAvailable", info["MemFree"])


def kv_cache_bytes(o: VLLMOptions) -> Optional[int]:
    """The fixed KV cache size for ``vllm.LLM`` (``kv_cache_memory_bytes``): ``kv_cache_gib`` when set; on the CPU
    build ``gpu_memory_utilization`` x the node's RAM; None on a GPU (vLLM sizes it from its memory share)."""
    if o.kv_cache_gib is not None:
        return int(o.kv_cache_gib * 2**30)
    if o.cpu:
        return int(o.gpu_memory_utilization * node_ram_bytes()[0])
    return None


def check_cpu_kv_cache(kw: dict) -> None:
    """On the CPU build, fail before vLLM starts when the KV cache that ``vllm.LLM`` gets (``kw``, from
    ``llm_kwargs``: ``engine_kwargs`` included) cannot fit in the RAM available now (vLLM's own error is raised in
    its engine core's log; its caller only sees "Engine core initialization failed")."""
    kv = kw.get("kv_cache_memory_bytes")
    if kv is None:
        return
    total, available = node_ram_bytes()
    if kv > available:
        raise ValueError(f"vllm: a KV cache of {kv / 2**30:.2f} GiB does not fit in the {available / 2**30:.2f} GiB "
                         f"of RAM available on this node ({total / 2**30:.1f} GiB in all); lower vllm.kv_cache_gib "
                         "or vllm.gpu_memory_utilization (on the CPU build, the share of RAM for the KV cache)")


def processor_kwargs(model_type: Optional[str], cfg: EngineConfig) -> dict:
    """The pixel bounds for processors that take them (Qwen-VL); {} for every other model (Pixtral, ...)."""
    if model_type not in PIXEL_KWARGS_MODELS:
        return {}
    kw = {"max_pixels": cfg.max_pixels}
    if cfg.min_pixels:
        kw["min_pixels"] = cfg.min_pixels
    return kw


def is_mistral_tokenizer(tokenizer: Any) -> bool:
    """True for vLLM's ``MistralTokenizer`` (mistral_common renders the chat; no chat template)."""
    return any(c.__name__ == "MistralTokenizer" for c in type(tokenizer).__mro__)


class ImageCache:
    """Decoded page images by content key, least recently used dropped past ``size`` (0 = no caching)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self.decoded = 0

    def get(self, part: ImagePart) -> tuple[str, Any]:
        """(content key, RGB PIL image); ValueError for bytes that are not an image."""
        key = part.key()
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return key, hit
        img = part.to_pil()
        self.decoded += 1
        if self.size:
            self._items[key] = img
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key, img


def chat_messages(messages: Sequence, images: ImageCache, mistral: bool) -> list[dict]:
    """OpenAI-style messages for ``LLM.chat``: images first in each turn; decoded ``image_pil`` parts with their
    content key as ``uuid``, or, for Mistral's tokenizer, ``image_url`` data URLs (checked to decode)."""
    def part(p: ImagePart) -> dict:
        key, img = images.get(p)
        if mistral:
            return {"type": "image_url", "image_url": {"url": p.to_data_url()}, "uuid": key}
        return {"type": "image_pil", "image_pil": img, "uuid": key}

    return to_openai_dicts(messages, image_part=part, images_first=True)


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


def judge_sampling_kwargs(token_pair: Sequence[int], top_logprobs: int, by_id: bool = False) -> dict:
    """One greedy token restricted to the two answer tokens. ``by_id`` (vLLM >= 0.32's ``logprob_token_ids``): the
    raw logprobs of exactly the two answer tokens; else the top ``top_logprobs`` (raw, before the restriction), in
    which one of the two may be missing (then bounded, see ``parse_judgement``)."""
    kw: dict[str, Any] = dict(temperature=0.0, max_tokens=1, allowed_token_ids=list(token_pair))
    if by_id:
        kw["logprob_token_ids"] = list(token_pair)
    else:
        kw["logprobs"] = top_logprobs
    return kw


def logprobs_by_id(vllm: Any) -> bool:
    """Whether this vLLM's ``SamplingParams`` takes ``logprob_token_ids`` (the logprobs of chosen tokens)."""
    return vllm is not None and "logprob_token_ids" in getattr(vllm.SamplingParams, "__struct_fields__", ())


def make_sampling_params(vllm: Any, kw: dict):
    """``vllm.SamplingParams`` (with ``StructuredOutputsParams`` for a schema) from ``sampling_kwargs`` output;
    raises what vLLM raises for values it rejects (n > 1 when greedy, temperature > 2, an empty stop string)."""
    kw = dict(kw)
    schema = kw.pop("structured_json", None)
    if schema is not None:
        from vllm.sampling_params import StructuredOutputsParams

        kw["structured_outputs"] = StructuredOutputsParams(json=schema)
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


def is_engine_dead(err: BaseException) -> bool:
    """Whether ``err`` is vLLM's ``EngineDeadError`` (its engine core process is gone; nothing can be answered)."""
    return any(c.__name__ == "EngineDeadError" for c in type(err).__mro__)


def classify_error(err: Exception) -> str:
    """An engine error string for a request vLLM failed: prompt_too_long, bad_input (vLLM's client errors:
    the request itself is wrong), or engine_error."""
    msg = f"{type(err).__name__}: {err}"[:300]
    text = str(err)
    if any(s in text for s in ("longer than the maximum model length", "max_model_len", "maximum context length")):
        return make_error("prompt_too_long", msg)
    if any(c.__name__ in ("VLLMClientError", "VLLMValidationError") for c in type(err).__mro__):
        return make_error("bad_input", msg)
    return make_error("engine_error", msg)


class VLLMEngine(TextEngine):
    """Engine on ``vllm.LLM``; ``llm`` may be passed in (an existing LLM, or a fake in tests)."""

    def __init__(self, cfg: EngineConfig, llm: Any = None):
        super().__init__()
        self.cfg = cfg
        self.json_repair, self.reject_refusals = cfg.json_repair, cfg.reject_refusals
        if llm is None:
            self._vllm = import_vllm()
            kw = llm_kwargs(cfg, *checkpoint_info(cfg.model))
            if cfg.vllm.cpu:
                check_cpu_kv_cache(kw)
            llm = self._vllm.LLM(**kw)
        else:
            try:  # real SamplingParams when vllm imports (tests run both ways)
                self._vllm = import_vllm()
            except ImportError:
                self._vllm = None
        self.llm = llm
        self.tok = llm.get_tokenizer()
        self.mistral = is_mistral_tokenizer(self.tok)
        self.chat_template = None if self.mistral else self._chat_template()
        self.images = ImageCache(cfg.vllm.image_cache_size)
        self.dead: Optional[str] = None
        self.by_id = logprobs_by_id(self._vllm)

    def _chat_template(self) -> Optional[str]:
        # Passed to LLM.chat only when the tokenizer lacks one (vLLM would otherwise look elsewhere first).
        if getattr(self.tok, "chat_template", None):
            return None
        found = resolve_chat_template(self.cfg.model, self.tok, hub_offline())
        if found is None:
            raise ValueError(f"model {self.cfg.model!r}: no chat template in the tokenizer, chat_template.json or "
                             "chat_template.jinja (for a Mistral-format checkpoint set vllm.tokenizer_mode=mistral)")
        return found

    def _params(self, kw: dict):
        return kw if self._vllm is None else make_sampling_params(self._vllm, kw)

    def _prepare(self, messages: Sequence, kw: dict) -> tuple[list, Any]:
        """(chat messages, sampling params) of one request; raises for bad input or parameters vLLM rejects."""
        try:
            params = self._params(kw)
        except Exception as err:  # noqa: BLE001 - vLLM's validation errors are not ValueErrors
            raise ValueError(f"sampling parameters rejected by vLLM ({type(err).__name__}: {err})"[:300]) from None
        return chat_messages(messages, self.images, self.mistral), params

    def _chat(self, convs: list, params: list) -> list:
        outs = list(self.llm.chat(convs, params, use_tqdm=False, chat_template=self.chat_template,
                                  add_generation_prompt=True))
        if len(outs) > len(convs):
            # Outputs come sorted by request id: extra ones are older requests a failed call left behind.
            log.warning("vLLM returned %d outputs for %d requests; dropping the %d older ones", len(outs),
                        len(convs), len(outs) - len(convs))
            outs = outs[-len(convs):]
        if len(outs) != len(convs):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(convs)} requests")
        return outs

    def dead_reason(self) -> Optional[str]:
        """Why this engine answers nothing more, or None while it lives. vLLM marks its client dead when its engine
        core process exits; a call already waiting on that process's outputs then waits forever (vLLM 0.32), so a
        pool actor asks this from a watchdog thread (``engines.pool_actor``) and ends itself."""
        if self.dead is None:
            try:
                dead = self.llm.llm_engine.engine_core.resources.engine_dead is True
            except AttributeError:  # an in-process engine core, or a vLLM that keeps the flag elsewhere
                dead = False
            if dead:
                self.dead = f"the vLLM engine of {self.cfg.model} died (its engine core process exited)"
                log.error("%s; this engine answers nothing more", self.dead)
        return self.dead

    def _run_split(self, convs: list, params: list) -> list:
        # vLLM renders and validates a whole call before running it, and one bad request fails all: split the
        # call in halves until the bad one is alone, so the rest still run in large batches.
        if self.dead_reason():
            raise EngineDeadError(self.dead)
        try:
            return self._chat(convs, params)
        except Exception as err:  # noqa: BLE001
            if is_engine_dead(err):
                self.dead = f"the vLLM engine of {self.cfg.model} died ({type(err).__name__}: {err})"[:300]
                log.error("%s; this engine answers nothing more", self.dead)
                raise EngineDeadError(self.dead) from err
            if len(convs) == 1:
                return [err]
        mid = len(convs) // 2
        return self._run_split(convs[:mid], params[:mid]) + self._run_split(convs[mid:], params[mid:])

    def _run(self, convs: list, params: list, keys: list) -> list:
        """Outputs (or the exception of a failed request) in input order; requests of a page sent together."""
        if not convs:
            return []
        order = group_order(keys)
        outs = self._run_split([convs[i] for i in order], [params[i] for i in order])
        back: list[Any] = [None] * len(order)
        for pos, i in enumerate(order):
            back[i] = outs[pos]
        return back

    def _generate_raw(self, requests: Sequence[GenerateRequest]) -> list[RawGeneration]:
        raws: list[Optional[RawGeneration]] = [None] * len(requests)
        todo, convs, params, keys = [], [], [], []
        for i, req in enumerate(requests):
            try:
                conv, p = self._prepare(req.messages, sampling_kwargs(req, self.cfg.seed))
            except ValueError as err:
                raws[i] = RawGeneration(error=make_error("bad_input", str(err)))
                continue
            convs.append(conv)
            params.append(p)
            keys.append(image_keys(req.messages))
            todo.append(i)
        for i, out in zip(todo, self._run(convs, params, keys)):
            raws[i] = RawGeneration(error=classify_error(out)) if isinstance(out, Exception) else parse_generation(out)
        return raws

    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """P(yes) per request from the logprobs of one restricted greedy token."""
        results: list[Optional[JudgeResult]] = [None] * len(requests)
        todo, convs, params, pairs, keys = [], [], [], [], []
        for i, req in enumerate(requests):
            try:
                pair = answer_token_ids(self.tok, req.yes, req.no)
                conv, p = self._prepare(req.messages, judge_sampling_kwargs(pair, self.cfg.vllm.judge_top_logprobs,
                                                                            self.by_id))
            except ValueError as err:
                results[i] = JudgeResult(error=make_error("bad_input", str(err)))
                continue
            convs.append(conv)
            params.append(p)
            pairs.append(pair)
            keys.append(image_keys(req.messages))
            todo.append(i)
        for i, pair, out in zip(todo, pairs, self._run(convs, params, keys)):
            failed = isinstance(out, Exception)
            results[i] = JudgeResult(error=classify_error(out)) if failed else parse_judgement(out, pair)
        for req, res in zip(requests, results):
            res.id = req.id
        self.stats.update("judge_" + (error_kind(r.error) or "ok") for r in results)
        return results

    def close(self) -> None:
        """Stop the engine's core process (where it has one) and drop the engine (frees GPU memory)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception as err:  # noqa: BLE001 - already gone
                log.debug("vLLM engine core shutdown: %s", err)
        self.llm = None
        self.images = ImageCache(0)
