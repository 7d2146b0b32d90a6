"""transformers backend (CPU or GPU): causal LMs and Qwen2-VL / Qwen2.5-VL / Qwen3-VL from a path or the HF cache.

Prompts are built with the checkpoint's chat template; each ``<|image_pad|>`` placeholder is expanded to the
image's token count (``grid_thw.prod() // merge_size**2``), as the Qwen processor does, with the PIL image
processor (no torchvision needed). Judging reads the two answer-token logits at the last position of one
forward pass; requests that share a page prefix go through ``hf_prefix`` (prefix encoded once).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from docrerank.engines import hf_prefix
from docrerank.engines.base import TextEngine
from docrerank.engines.config import EngineConfig
from docrerank.engines.parsing import p_yes_from_logprobs
from docrerank.engines.requests import GenerateRequest, JudgeRequest, JudgeResult, RawGeneration, error_kind, make_error
from docrerank.engines.messages import ImagePart, images_of, to_template_dicts
from docrerank.models.hub import load_tokenizer, read_checkpoint_json, resolve_device, resolve_dtype

VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass
class Encoded:
    """One tokenized request: token ids (image placeholders expanded) and its preprocessed images."""

    ids: list
    pixel_values: Any = None  # (patches, dim) for all images of the request, or None
    grid_thw: Any = None  # (n_images, 3), or None
    key: tuple = ()


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
        self.is_vl = mcfg.model_type in VL_MODEL_TYPES
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
        from docrerank.models.qwen_vl import image_processor

        pre = read_checkpoint_json(self.cfg.model, "preprocessor_config.json", self.cfg.hf.local_files_only) or {}
        return image_processor(pre, self.cfg.min_pixels, self.cfg.max_pixels)

    # ------------------------------------------------------------------------------------ encoding
    def _preprocess(self, part: ImagePart):
        key = part.key()
        hit = self._image_cache.get(key)
        if hit is not None:
            self._image_cache.move_to_end(key)
            return hit
        out = self.image_processor(images=[part.to_pil()], return_tensors="pt")
        value = (out["pixel_values"], out["image_grid_thw"])
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
        ids = self.tok.apply_chat_template(to_template_dicts(messages), tokenize=False, add_generation_prompt=True)
        ids = self.tok(ids, add_special_tokens=False)["input_ids"]
        if not images:
            return Encoded(ids=list(ids))
        processed = [self._preprocess(p) for p in images]
        counts = [int(g.prod()) // self.merge_size**2 for _, g in processed]
        if ids.count(self.image_token_id) != len(images):
            raise ValueError(f"chat template produced {ids.count(self.image_token_id)} image placeholders for "
                             f"{len(images)} image(s)")
        expanded, k = [], 0
        for t in ids:
            if t == self.image_token_id:
                expanded.extend([t] * counts[k])
                k += 1
            else:
                expanded.append(t)
        torch = self._torch
        return Encoded(
            ids=expanded,
            pixel_values=torch.cat([pv for pv, _ in processed]),
            grid_thw=torch.cat([g for _, g in processed]),
            key=tuple(p.key() for p in images),
        )

    def full_positions(self, enc: Encoded):
        """Position ids of the whole sequence: (3, L) M-RoPE for VL models, (L,) otherwise."""
        torch = self._torch
        n = len(enc.ids)
        if not self.is_vl:
            return torch.arange(n)
        if enc.grid_thw is None:
            return torch.arange(n).expand(3, n)
        ids = torch.tensor([enc.ids])
        pos, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=(ids == self.image_token_id).int(), image_grid_thw=enc.grid_thw
        )
        return pos[:, 0, :]

    def batch_inputs(self, encs: Sequence[Encoded], positions: bool = True) -> dict:
        """Left-padded model inputs for a batch (with position ids when ``positions``)."""
        torch = self._torch
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for r, e in enumerate(encs):
            ids[r, width - len(e.ids) :] = torch.tensor(e.ids, dtype=torch.long)
            mask[r, width - len(e.ids) :] = 1
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        with_images = [e for e in encs if e.grid_thw is not None]
        if with_images:
            inputs["pixel_values"] = torch.cat([e.pixel_values for e in with_images]).to(self.dtype)
            inputs["image_grid_thw"] = torch.cat([e.grid_thw for e in with_images])
            inputs["mm_token_type_ids"] = (ids == self.image_token_id).int()
        if positions:
            if with_images:
                pos, _ = self.model.model.get_rope_index(
                    ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                    attention_mask=mask,
                )
            else:
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                pos = pos.expand(3, *pos.shape) if self.is_vl else pos
            inputs["position_ids"] = pos
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
            except ValueError as err:
                results[i] = JudgeResult(error=make_error("bad_input", str(err)), id=req.id)
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
        groups, rest = hf_prefix.plan_prefix_groups(
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

    def _judge_group(self, group: hf_prefix.PrefixGroup, encs: dict, pairs: dict):
        first = encs[group.indices[0]]
        plen = group.prefix_len
        prefix = Encoded(ids=first.ids[:plen], pixel_values=first.pixel_values, grid_thw=first.grid_thw)
        inputs = self.batch_inputs([prefix], positions=False)
        inputs["position_ids"] = self.full_positions(first)[..., :plen].unsqueeze(-2).to(self.device)
        members = [encs[i] for i in group.indices]
        return hf_prefix.judge_prefix_group(
            self.model, inputs, [e.ids[plen:] for e in members], [self.full_positions(e)[..., plen:] for e in members],
            pairs[group.indices[0]], self.pad_id, self.cfg.batch_size,
        )

    # ------------------------------------------------------------------------------------ generate
    def _generate_raw(self, requests: Sequence[GenerateRequest]) -> list[RawGeneration]:
        raws: list[Optional[RawGeneration]] = [None] * len(requests)
        encs: dict[int, Encoded] = {}
        for i, req in enumerate(requests):
            try:
                encs[i] = self.encode(req.messages)
            except ValueError as err:
                raws[i] = RawGeneration(error=make_error("bad_input", str(err)))
                continue
            err = self._too_long(len(encs[i].ids), req.sampling.max_tokens)
            if err:
                raws[i] = RawGeneration(error=err, prompt_tokens=len(encs[i].ids))
        by_sampling: dict[Any, list[int]] = {}
        for i in encs:
            if raws[i] is None:
                by_sampling.setdefault(requests[i].sampling, []).append(i)
        for sampling, idx in by_sampling.items():
            for s in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[s : s + self.cfg.batch_size]
                try:
                    outs = self._generate_chunk([encs[i] for i in chunk], sampling)
                except Exception as err:  # noqa: BLE001 - confined to this chunk
                    outs = [RawGeneration(error=make_error("engine_error", f"{type(err).__name__}: {err}"[:300]))
                            for _ in chunk]
                for i, raw in zip(chunk, outs):
                    raws[i] = raw
        return raws

    def _generate_chunk(self, encs: list, sampling) -> list[RawGeneration]:
        torch = self._torch
        inputs = self.batch_inputs(encs, positions=False)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_tokens, num_return_sequences=sampling.n, pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids, do_sample=sampling.temperature > 0,
        )
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
            torch.manual_seed(sampling.seed if sampling.seed is not None else self.cfg.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tok)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        raws = []
        for r, enc in enumerate(encs):
            texts, reasons, n_tokens = [], [], 0
            for seq in new[r * sampling.n : (r + 1) * sampling.n]:
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
