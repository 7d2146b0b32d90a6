"""Scoring models: ``vlm`` (Qwen2-VL-family, MonoQwen2-VL input, logit(True) - logit(False)) and ``text``
(a cross-encoder over query and page text). Each scorer turns a ``Batch`` into model inputs on the CPU
(``encode``) and inputs into float32 scores (``forward``), so the same module serves DeepSpeed and plain torch.

VLM inputs are built as ``engines/hf.py`` does (chat template, ``<|image_pad|>`` expanded to the image's token
count, the PIL image processor: no Qwen2VLProcessor, no torchvision). A page shared by several examples of a
batch goes through the frozen vision tower once (no gradient), its features are reused for each query.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from docrerank.train.collate import Batch
from docrerank.models.hub import (
    DEFAULT_TEXT,
    DEFAULT_VLM,
    load_tokenizer,
    read_checkpoint_json,
    resolve_dtype,
    resolve_model_path,
)
from docrerank.train.config import LoraConfig, ModelConfig

LM_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_PROJECTIONS = ["query", "key", "value", "dense"]


def lora_targets(backbone: str, names: Optional[list[str]]) -> Any:
    """PEFT ``target_modules``: for vlm a regex confined to the language model (the vision tower stays frozen)."""
    if backbone == "vlm":
        names = names or LM_PROJECTIONS
        return rf".*language_model.*\.({'|'.join(names)})"
    return names or TEXT_PROJECTIONS


def apply_lora(model: nn.Module, backbone: str, lora: LoraConfig) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (only they train), or, LoRA disabled, unfreeze the trained part."""
    if not lora.enabled:
        for name, p in model.named_parameters():
            # vlm: the decoder layers train; embeddings, lm_head (the True/False rows) and the vision tower don't.
            p.requires_grad_(backbone == "text" or (".language_model." in f".{name}" and ".layers." in name))
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pcfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora_targets(backbone, lora.target_modules),
                          modules_to_save=["classifier"] if backbone == "text" else None)
    return get_peft_model(model, pcfg)


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class VLMScorer(nn.Module):
    """score = h_last . (W[True] - W[False]) in float32, h_last the final hidden state at the generation prompt."""

    def __init__(self, model: nn.Module, tokenizer, image_processor, cfg: ModelConfig, path: str):
        super().__init__()
        self.model = model
        self.tokenizer, self.image_processor, self.cfg, self.path = tokenizer, image_processor, cfg, path
        base = base_of(model)
        self.image_token_id = base.config.image_token_id
        self.merge_size = getattr(image_processor, "merge_size", 2)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in (cfg.true_token, cfg.false_token)]
        if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"model.true_token/false_token: expected two different single tokens, got {ids}")
        self.answer_ids = (ids[0][0], ids[1][0])
        w = base.get_output_embeddings().weight.detach()
        # A plain attribute, not a buffer: DeepSpeed's bf16 cast must not round it (scores stay float32).
        self._w_diff = (w[ids[0][0]].float() - w[ids[1][0]].float()).clone()

    # ------------------------------------------------------------------------------------- inputs
    def prompt_ids(self, query: str) -> list[int]:
        """Token ids of one example with a single ``<|image_pad|>`` placeholder (generation prompt on)."""
        return vlm_prompt_ids(self.tokenizer, self.cfg.prompt, query)

    def image_tokens(self, grid_thw) -> int:
        return int(grid_thw.prod()) // self.merge_size**2

    def example_ids(self, query: str, n_image_tokens: int, where: str = "") -> list[int]:
        """Token ids of one example with its image placeholder expanded to ``n_image_tokens``; ValueError when
        that exceeds ``max_seq_len``."""
        ids = self.prompt_ids(query)
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"chat template gave {ids.count(self.image_token_id)} image placeholders, expected 1")
        k = ids.index(self.image_token_id)
        ids = ids[:k] + [self.image_token_id] * n_image_tokens + ids[k + 1:]
        if len(ids) > self.cfg.seq_len:
            raise ValueError(
                f"{where}{len(ids)} tokens after expanding {n_image_tokens} image tokens > "
                f"model.max_seq_len={self.cfg.seq_len} (query {query[:60]!r}); lower model.max_pixels "
                f"(now {self.cfg.max_pixels}) or raise model.max_seq_len")
        return ids

    def _pixels(self, image, page_id: str):
        """Pixel patches and grid of one page image (encoded bytes or a PIL image)."""
        from PIL import Image

        if image is None:
            raise ValueError(f"page {page_id}: no image (the vlm backbone needs page images)")
        img = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
        out = self.image_processor(images=[img.convert("RGB")], return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def encode(self, batch: Batch, pixels: Optional[list] = None) -> dict[str, torch.Tensor]:
        """Left-padded input ids (image tokens expanded), each distinct page's pixels once; ValueError when an
        example exceeds ``max_seq_len``. ``pixels``: the pages' ``(pixel_values, grid_thw)`` when already
        computed (inference caches them)."""
        pages = pixels or [self._pixels(img, pid) for img, pid in zip(batch.images, batch.page_ids)]
        seqs = [self.example_ids(q, self.image_tokens(pages[p][1]), f"example {i} (page {batch.page_ids[p]}): ")
                for i, (q, p) in enumerate(zip(batch.queries, batch.page_of))]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            input_ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
        page_of = torch.tensor(batch.page_of, dtype=torch.long)
        page_grid = torch.cat([g for _, g in pages])
        return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": torch.cat([pv for pv, _ in pages]),
                "page_grid": page_grid, "page_of": page_of,
                "mm_token_type_ids": (input_ids == self.image_token_id).int()}

    # -------------------------------------------------------------------------------------- score
    def forward(self, input_ids, attention_mask, pixel_values, page_grid, page_of, mm_token_type_ids):
        inner = base_of(self.model).model
        with torch.no_grad():  # frozen vision tower: no activations kept, one pass per distinct page
            feats = inner.get_image_features(pixel_values, page_grid, return_dict=True)
        index = page_of.tolist()
        feats.pooler_output = [feats.pooler_output[i] for i in index]
        if getattr(feats, "deepstack_features", None) is not None:  # Qwen3-VL
            feats.deepstack_features = [[layer[i] for i in index] for layer in feats.deepstack_features]
        out = inner(input_ids=input_ids, attention_mask=attention_mask, image_grid_thw=page_grid[page_of],
                    mm_token_type_ids=mm_token_type_ids, mm_encoder_outputs={"image": feats}, use_cache=False)
        h = out.last_hidden_state[:, -1].float()
        if self._w_diff.device != h.device:
            self._w_diff = self._w_diff.to(h.device)
        return h @ self._w_diff


class TextScorer(nn.Module):
    """score = logit("True") - logit("False") of a 2-label sequence classifier over (query, page text)."""

    def __init__(self, model: nn.Module, tokenizer, cfg: ModelConfig, path: str):
        super().__init__()
        self.model, self.tokenizer, self.cfg, self.path = model, tokenizer, cfg, path

    def encode(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Tokenized (query, page text) pairs; the page text is truncated to ``max_seq_len``."""
        texts = [batch.texts[p] for p in batch.page_of]
        enc = self.tokenizer(batch.queries, texts, truncation="only_second", max_length=self.cfg.seq_len,
                             padding=True, return_tensors="pt")
        return dict(enc)

    def forward(self, **inputs):
        logits = self.model(**inputs).logits.float()
        return logits[:, 1] - logits[:, 0]


def load_image_processor(path: str, cfg: ModelConfig):
    """The PIL Qwen2-VL image processor with the checkpoint's settings and the configured pixel bounds."""
    from docrerank.models.qwen_vl import image_processor

    return image_processor(read_checkpoint_json(path, "preprocessor_config.json") or {}, cfg.min_pixels, cfg.max_pixels)


def vlm_prompt_ids(tokenizer, prompt: str, query: str) -> list[int]:
    """MonoQwen2-VL input ids: user turn = one image placeholder then ``prompt`` with the query; generation
    prompt on."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.format(query=query)}]}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_vlm_budget(cfg: ModelConfig, path: str) -> None:
    """Fail before training when a page at the pixel cap cannot fit ``max_seq_len`` (no weights loaded)."""
    proc = load_image_processor(path, cfg)
    patch = getattr(proc, "patch_size", 14) * getattr(proc, "merge_size", 2)
    image_tokens = cfg.max_pixels // (patch * patch)
    need = len(vlm_prompt_ids(load_tokenizer(path), cfg.prompt, "")) - 1 + image_tokens
    if need > cfg.seq_len:
        raise ValueError(f"model.max_seq_len={cfg.seq_len} cannot hold a page at model.max_pixels={cfg.max_pixels}: "
                         f"{image_tokens} image tokens + the prompt = {need} tokens before the query")


def build_scorer(cfg: ModelConfig, lora: LoraConfig, device: str = "cpu", seed: int = 0) -> nn.Module:
    """Load the backbone from ``cfg.path``, add LoRA (or unfreeze), enable gradient checkpointing; on the CPU,
    in ``cfg.dtype`` (auto: bfloat16 for a cuda ``device``). The text head is initialised from ``seed``."""
    path = resolve_model_path(cfg.path or (DEFAULT_VLM if cfg.backbone == "vlm" else DEFAULT_TEXT))
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    torch.manual_seed(seed)
    if cfg.backbone == "vlm":
        from transformers import AutoModelForImageTextToText

        check_vlm_budget(cfg, path)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        tok = load_tokenizer(path)
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=2, id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1}, **kwargs)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    model = apply_lora(model, cfg.backbone, lora)
    if cfg.backbone == "vlm":
        return VLMScorer(model, tok, load_image_processor(path, cfg), cfg, path)
    return TextScorer(model, tok, cfg, path)


def trainable_names(scorer: nn.Module) -> list[str]:
    """Names of the parameters that train."""
    return [n for n, p in scorer.named_parameters() if p.requires_grad]
