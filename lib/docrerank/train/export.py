"""Export a trained scorer: the LoRA adapter (PEFT layout), the merged model (``save_pretrained``, loadable by plain
transformers) with its tokenizer and image processor config, and the resolved training config beside them.

    <output>/model/adapter/   adapter_config.json, adapter_model.safetensors (LoRA runs)
    <output>/model/merged/    config.json, model.safetensors, tokenizer, preprocessor_config.json (vlm), reranker.json
    <output>/model/train_config.json

The LoRA is merged in float32 and the merged weights are then cast once to the training dtype (bf16 on GPU): merging
in bf16 rounds the LoRA factors and their product before adding them, and the merged model drifts from the trained
adapter. ``reranker.json`` says how to score with the merged model: vlm, logit(true_token) - logit(false_token) at the last
position of the MonoQwen2-VL prompt; text, logits[:, 1] - logits[:, 0] of the sequence classifier.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from docrerank.core import storage
from docrerank.core.runtime import redact
from docrerank.train.config import TrainConfig
from docrerank.train.dist import world

if TYPE_CHECKING:
    import torch

PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                   "chat_template.jinja")


def trainable_state(scorer: torch.nn.Module) -> Optional[dict]:
    """The trained parameters as float32 CPU tensors on rank 0 (None on other ranks).

    Under ZeRO-3 the parameters are partitioned: every rank must call this (it gathers them).
    """
    rank = world()[0]
    params = [(n, p) for n, p in scorer.named_parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for _, p in params):  # ZeRO-3 partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in params} if rank == 0 else None
    return {n: p.detach().float().cpu().clone() for n, p in params} if rank == 0 else None


def load_trained(cfg: TrainConfig, state: dict, device: str = "cpu", dtype: Optional[str] = None) -> torch.nn.Module:
    """A fresh scorer (weights in ``dtype``, default the dtype trained on ``device``; kept on the CPU) with the
    trained ``state``."""
    from transformers.utils import logging as hf_logging

    from docrerank.train.backbones import build_scorer

    model_cfg = cfg.model.model_copy(update={"gradient_checkpointing": False, **({"dtype": dtype} if dtype else {})})
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the base model's "newly initialized head" report: the state replaces it
    try:
        scorer = build_scorer(model_cfg, cfg.lora, device=device, seed=cfg.seed)
    finally:
        hf_logging.set_verbosity(level)
    result = scorer.load_state_dict(state, strict=False)
    missing = [n for n, p in scorer.named_parameters() if p.requires_grad and n not in state]
    if result.unexpected_keys or missing:
        raise ValueError(f"trained state does not match the model: unexpected {result.unexpected_keys[:5]}, "
                         f"missing {missing[:5]}")
    return scorer.eval()


def reranker_card(cfg: TrainConfig) -> dict:
    """How to score with the merged model (read by evaluation and reranking)."""
    m = cfg.model
    if m.backbone == "vlm":
        return {"backbone": "vlm", "score": "logit(true_token) - logit(false_token) at the last position",
                "prompt": m.prompt, "true_token": m.true_token, "false_token": m.false_token,
                "max_pixels": m.max_pixels, "max_seq_len": m.seq_len}
    return {"backbone": "text", "score": "logits[:, 1] - logits[:, 0] over (query, page text)",
            "max_seq_len": m.seq_len}


def save_local(scorer: torch.nn.Module, cfg: TrainConfig, out: Path, dtype: Optional[torch.dtype] = None) -> None:
    """Write adapter/, merged/ and train_config.json under the local directory ``out``; the merged weights are cast to
    ``dtype`` after the merge (which runs in the scorer's dtype: float32 from ``export_model``)."""
    out.mkdir(parents=True, exist_ok=True)
    model = scorer.model
    if cfg.lora.enabled:
        model.save_pretrained(str(out / "adapter"))
        model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    merged = out / "merged"
    model.config.use_cache = True  # training turned it off; inference wants it
    model.save_pretrained(str(merged))
    scorer.tokenizer.save_pretrained(str(merged))
    if cfg.model.backbone == "vlm":
        for name in PROCESSOR_FILES:
            src = Path(scorer.path) / name
            if src.is_file() and not (merged / name).exists():
                shutil.copy(src, merged / name)
        pre = merged / "preprocessor_config.json"
        data = json.loads(pre.read_text()) if pre.is_file() else {}
        # Inference must see pages at the training resolution.
        data.update(max_pixels=cfg.model.max_pixels)
        if cfg.model.min_pixels:
            data.update(min_pixels=cfg.model.min_pixels)
        pre.write_text(json.dumps(data, indent=2) + "\n")
    (merged / "reranker.json").write_text(json.dumps(reranker_card(cfg), indent=2) + "\n")
    (out / "train_config.json").write_text(json.dumps(redact(cfg.model_dump(mode="json")), indent=2) + "\n")


def upload_dir(local: Path, dest: storage.Location) -> None:
    """Copy every file under ``local`` to ``dest`` (any pyarrow filesystem), each written atomically."""
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.write_bytes_atomic(dest.join(str(f.relative_to(local))), f.read_bytes())


def export_model(state: dict, cfg: TrainConfig, device: str = "cpu") -> str:
    """Rebuild the scorer in float32 with the trained ``state``, merge, cast to the dtype trained on ``device`` and
    write it to ``<output>/model``; returns that URI."""
    from docrerank.models.hub import resolve_dtype

    scorer = load_trained(cfg, state, device, dtype="float32")
    dtype = resolve_dtype(cfg.model.dtype, device)
    dest = storage.resolve(cfg.output).join("model")
    if "://" not in dest.uri:
        save_local(scorer, cfg, Path(dest.path), dtype)
        return dest.uri
    with tempfile.TemporaryDirectory(prefix="docrerank-export-") as tmp:
        save_local(scorer, cfg, Path(tmp), dtype)
        upload_dir(Path(tmp), dest)
    return dest.uri
