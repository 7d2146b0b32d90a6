"""transformers backend (CPU or GPU): causal LMs and Qwen2-VL / Qwen2.5-VL / Qwen3-VL from a path or the HF cache.

Prompts are built through ``models.qwen_vl`` (the checkpoint's chat template, each ``<|image_pad|>`` placeholder
expanded to the image's token count, the PIL image processor: no torchvision needed), the same input path as the
vlm training backbone and the Reranker. Judging reads the two answer-token logits at the last position of one
forward pass; requests that share a page prefix go through ``models.prefix`` (prefix encoded once). Generation
batches requests that differ only in their seed: each sample draws from its own seeded generator
(``seeded_sampler``), so a request's samples do not depend on the batch it is in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from docrerank.engines.base import TextEngine
from docrerank.engines.config import EngineConfig
from docrerank.engines.messages import ImagePart, images_of, to_template_dicts
from docrerank.engines.parsing import p_yes_from_logprobs
from docrerank.engines.requests import GenerateRequest, JudgeRequest, JudgeResult, RawGeneration, error_kind, make_error
from docrerank.models import prefix, qwen_vl
from docrerank.models.hub import load_tokenizer, resolve_device, resolve_dtype


@dataclass
class Encoded:
    """One tokenized request: token ids (image placeholders expanded) and its preprocessed images."""

    ids: list
    pixel_values: Any = None  # (patches, dim) for all images of the request, or None
    grid_thw: Any = None  # (n_images, 3), or None
    key: tuple = ()

    @property
    def pixels(self) -> list:
        """The request's images as ``qwen_vl.batch_inputs`` takes them."""
        return [] if self.grid_thw is None else [(self.pixel_values, self.grid_thw)]


def sample_seed(seed: int, j: int) -> int:
    """The seed of sample ``j`` of a request seeded ``seed`` (distinct per sample, the same in any batch)."""
    return (seed * 1_000_003 + j) % (2**63)


def seeded_sampler(row_seeds: Sequence[int], temperature: float, top_p: float):
    """A ``LogitsProcessorList`` that samples each row's next token with its own ``torch.Generator`` (temperature,
    then nucleus ``top_p``) and leaves only that token possible, so greedy decoding emits it.

    transformers samples a batch from the one global generator, so a row's tokens would depend on its batch
    neighbours; with one generator per row, a request gives the same samples alone or in any batch.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list = []

        def __call__(self, input_ids, scores):
            if not self.generators:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in row_seeds]
            probs = torch.softmax(scores.float() / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
                probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
            picks = torch.stack([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.generators)])
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter(-1, picks, 0.0)

    return LogitsProcessorList([SeededSampler()])


class HFEngine(TextEngine):
    """Engine on a transformers model; see the module docstring."""

    def __init__(self, cfg: EngineConfig):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        super().__init__()
        self.cfg = cfg
        self.json_repair, self.reject_refusals = cfg.json_repair, cfg.reject_refusals
        self.device = resolve_device(cfg.hf.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        load = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=cfg.hf.local_files_only)
        mcfg = AutoConfig.from_pretrained(cfg.model, **load)
        self.is_vl = mcfg.model_type in qwen_vl.VL_MODEL_TYPES
        model_cls = AutoModelForImageTextToText if self.is_vl else AutoModelForCausalLM
        kwargs = dict(dtype=self.dtype, **load)
        if cfg.hf.attn_implementation:
            kwargs["attn_implementation"] = cfg.hf.attn_implementation
        self.model = model_cls.from_pretrained(cfg.model, **kwargs).to(self.device).eval()
        self.tok = load_tokenizer(cfg.model, require_chat_template=True, **load)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.eos_ids = self._eos_ids()
        self.image_token_id = getattr(mcfg, "image_token_id", None) if self.is_vl else None
        self.image_processor = self._image_processor() if self.is_vl else None
        self.merge_size = getattr(self.image_processor, "merge_size", 2)
        self._image_cache: OrderedDict = OrderedDict()
        self.max_len = cfg.max_model_len or getattr(mcfg.get_text_config(), "max_position_embeddings", None)
        self._torch = torch

    # ------------------------------------------------------------------------------ loading helpers
    def _eos_ids(self) -> list:
        ids = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tok.eos_token_id is not None:
            ids.add(self.tok.eos_token_id)
        im_end = self.tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tok.unk_token_id:
            ids.add(im_end)
        return sorted(ids)

    def _image_processor(self):
        return qwen_vl.load_image_processor(self.cfg.model, self.cfg.min_pixels, self.cfg.max_pixels,
                                            self.cfg.hf.local_files_only)

    # ------------------------------------------------------------------------------------ encoding
    def _preprocess(self, part: ImagePart):
        key = part.key()
        hit = self._image_cache.get(key)
        if hit is not None:
            self._image_cache.move_to_end(key)
            return hit
        value = qwen_vl.page_pixels(self.image_processor, part.image)
        if self.cfg.hf.image_cache_size:
            self._image_cache[key] = value
            while len(self._image_cache) > self.cfg.hf.image_cache_size:
                self._image_cache.popitem(last=False)
        return value

    def encode(self, messages: Sequence) -> Encoded:
        """Token ids of the prompt (generation prompt added) with image placeholders expanded."""
        images = images_of(messages)
        if images and not self.is_vl:
            raise ValueError(f"model {self.cfg.model!r} is text-only, got a request with {len(images)} image(s)")
        ids = qwen_vl.prompt_ids(self.tok, to_template_dicts(messages))
        if not images:
            return Encoded(ids=ids)
        processed = [self._preprocess(p) for p in images]
        counts = [qwen_vl.image_token_count(g, self.merge_size) for _, g in processed]
        torch = self._torch
        return Encoded(
            ids=qwen_vl.expand_image_tokens(ids, self.image_token_id, counts),
            pixel_values=torch.cat([pv for pv, _ in processed]),
            grid_thw=torch.cat([g for _, g in processed]),
            key=tuple(p.key() for p in images),
        )

    def full_positions(self, enc: Encoded):
        """Position ids of the whole sequence: (3, L) M-RoPE for VL models, (L,) otherwise."""
        if not self.is_vl:
            return self._torch.arange(len(enc.ids))
        return qwen_vl.sequence_positions(self.model, enc.ids, self.image_token_id, enc.grid_thw)

    def batch_inputs(self, encs: Sequence[Encoded], positions: bool = True) -> dict:
        """Left-padded model inputs for a batch on the engine's device (with position ids when ``positions``)."""
        pixels = [p for e in encs for p in e.pixels]
        inputs = qwen_vl.batch_inputs([e.ids for e in encs], self.pad_id, self.image_token_id, pixels, self.dtype)
        if positions:
            mask = inputs["attention_mask"]
            inputs["position_ids"] = (
                qwen_vl.rope_positions(self.model, inputs["input_ids"], self.image_token_id,
                                       inputs.get("image_grid_thw"), mask)
                if self.is_vl else (mask.cumsum(-1) - 1).clamp(min=0))
        return {k: v.to(self.device) for k, v in inputs.items()}

    def answer_tokens(self, yes: str, no: str) -> tuple[int, int]:
        """First token ids of the two answer words; ValueError when they coincide."""
        y = self.tok.encode(yes, add_special_tokens=False)
        n = self.tok.encode(no, add_special_tokens=False)
        if not y or not n or y[0] == n[0]:
            raise ValueError(f"answer words {yes!r}/{no!r} must start with different tokens, got {y[:1]}/{n[:1]}")
        return y[0], n[0]

    def _too_long(self, n_prompt: int, n_new: int) -> Optional[str]:
        if self.max_len and n_prompt + n_new > self.max_len:
            return make_error("prompt_too_long", f"{n_prompt} prompt + {n_new} new tokens > {self.max_len}")
        return None

    # --------------------------------------------------------------------------------------- judge
    def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        """P(yes) for each request from the two answer logits at the next-token position."""
        requests = list(requests)
        results: list[Optional[JudgeResult]] = [None] * len(requests)
        encs: dict[int, Encoded] = {}
        pairs: dict[int, tuple[int, int]] = {}
        for i, req in enumerate(requests):
            try:
                pairs[i] = self.answer_tokens(req.yes, req.no)
                encs[i] = self.encode(req.messages)
            except ValueError as e:
                results[i] = JudgeResult(error=make_error("bad_input", str(e)), id=req.id)
                continue
            err = self._too_long(len(encs[i].ids), 1)
            if err:
                results[i] = JudgeResult(error=err, prompt_tokens=len(encs[i].ids), id=req.id)
        todo = [i for i in range(len(requests)) if results[i] is None]
        with self._torch.inference_mode():
            groups, rest = self._plan(todo, encs, pairs)
            self.stats["judge_prefix_groups"] += len(groups)
            self.stats["judge_prefix_requests"] += sum(len(g.indices) for g in groups)
            for g in groups:
                self._run_safely(results, g.indices, lambda g=g: self._judge_group(g, encs, pairs))
            for s in range(0, len(rest), self.cfg.batch_size):
                chunk = rest[s : s + self.cfg.batch_size]
                self._run_safely(results, chunk, lambda c=chunk: self._judge_plain(c, encs, pairs))
        for i, r in enumerate(results):
            r.id, r.prompt_tokens = requests[i].id, len(encs[i].ids) if i in encs else 0
        self.stats.update("judge_" + (error_kind(r.error) or "ok") for r in results)
        return results

    def _plan(self, todo: list, encs: dict, pairs: dict):
        if not self.cfg.hf.prefix_reuse or len(todo) < 2:
            return [], todo
        groups, rest = prefix.plan_prefix_groups(
            [encs[i].ids for i in todo], [(encs[i].key, pairs[i]) for i in todo], self.image_token_id,
            self.cfg.hf.min_prefix_tokens,
        )
        for g in groups:
            g.indices = [todo[j] for j in g.indices]
        return groups, [todo[j] for j in rest]

    def _run_safely(self, results: list, indices: list, fn) -> None:
        # One failing forward pass (e.g. out of memory) fails its requests, not the whole call.
        try:
            logits = fn()
        except Exception as err:  # noqa: BLE001
            for i in indices:
                results[i] = JudgeResult(error=make_error("engine_error", f"{type(err).__name__}: {err}"[:300]))
            return
        for i, (ly, ln) in zip(indices, logits.tolist()):
            results[i] = JudgeResult(p_yes=p_yes_from_logprobs(ly, ln), logprob_yes=ly, logprob_no=ln, method="logits")

    def _judge_plain(self, chunk: list, encs: dict, pairs: dict):
        torch = self._torch
        out = self.model(**self.batch_inputs([encs[i] for i in chunk]), use_cache=False, logits_to_keep=1)
        last = out.logits[:, -1, :].float()
        idx = torch.tensor([pairs[i] for i in chunk], device=last.device)
        return last.gather(1, idx)

    def _judge_group(self, group: prefix.PrefixGroup, encs: dict, pairs: dict):
        members = [encs[i] for i in group.indices]
        return prefix.shared_prefix_logits(
            self.model, [e.ids for e in members], group.prefix_len, [self.full_positions(e) for e in members],
            pairs[group.indices[0]], self.pad_id, self.cfg.batch_size, self.device, self.image_token_id,
            members[0].pixels, self.dtype,
        )

    # ------------------------------------------------------------------------------------ generate
    def _generate_raw(self, requests: Sequence[GenerateRequest]) -> list[RawGeneration]:
        raws: list[Optional[RawGeneration]] = [None] * len(requests)
        encs: dict[int, Encoded] = {}
        for i, req in enumerate(requests):
            try:
                encs[i] = self.encode(req.messages)
            except ValueError as e:
                raws[i] = RawGeneration(error=make_error("bad_input", str(e)))
                continue
            err = self._too_long(len(encs[i].ids), req.sampling.max_tokens)
            if err:
                raws[i] = RawGeneration(error=err, prompt_tokens=len(encs[i].ids))
        # Requests that differ only in their seed share a forward pass: each sample draws from its own generator.
        by_sampling: dict[Any, list[int]] = {}
        for i in encs:
            if raws[i] is None:
                by_sampling.setdefault(replace(requests[i].sampling, seed=None), []).append(i)
        for sampling, idx in by_sampling.items():
            for s in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[s : s + self.cfg.batch_size]
                seeds = [requests[i].sampling.seed for i in chunk]
                try:
                    outs = self._generate_chunk([encs[i] for i in chunk], sampling, seeds)
                except Exception as err:  # noqa: BLE001 - confined to this chunk
                    outs = [RawGeneration(error=make_error("engine_error", f"{type(err).__name__}: {err}"[:300]))
                            for _ in chunk]
                for i, raw in zip(chunk, outs):
                    raws[i] = raw
        return raws

    def _generate_chunk(self, encs: list, sampling, seeds: list) -> list[RawGeneration]:
        torch = self._torch
        n = sampling.n
        # One row per sample (request r, sample j at row r * n + j), so every row can carry its own seed.
        inputs = self.batch_inputs([e for e in encs for _ in range(n)], positions=False)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            do_sample=False, temperature=None, top_p=None, top_k=None,
        )
        if sampling.temperature > 0:
            row_seeds = [sample_seed(self.cfg.seed if sd is None else sd, j) for sd in seeds for j in range(n)]
            kwargs["logits_processor"] = seeded_sampler(row_seeds, sampling.temperature, sampling.top_p)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tok)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        raws = []
        for r, enc in enumerate(encs):
            texts, reasons, n_tokens = [], [], 0
            for seq in new[r * n : (r + 1) * n]:
                ended = next((j for j, t in enumerate(seq) if t in self.eos_ids), None)
                body = seq if ended is None else seq[:ended]
                body = [t for t in body if t != self.pad_id]
                n_tokens += len(body) + (ended is not None)
                texts.append(self.tok.decode(body, skip_special_tokens=True))
                reasons.append("stop" if ended is not None or len(seq) < sampling.max_tokens else "length")
            raws.append(RawGeneration(texts=texts, finish_reasons=reasons, prompt_tokens=len(enc.ids),
                                      completion_tokens=n_tokens))
        return raws

    def close(self) -> None:
        """Free the model (and GPU memory)."""
        self.model = None
        self._image_cache.clear()
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()
