"""Export a trained scorer: the LoRA adapter (PEFT layout), the merged model (``save_pretrained``, loadable by plain
transformers) with its tokenizer and image processor config, its model card, and the resolved training config.

    <output>/model/adapter/   adapter_config.json, adapter_model.safetensors (LoRA runs)
    <output>/model/merged/    config.json, model.safetensors, tokenizer, preprocessor_config.json (vlm), reranker.json,
                              README.md (the model card, ``train/model_card.py``)
    <output>/model/train_config.json

The LoRA is merged in float32 and the merged weights are then cast once to the training dtype (bf16 on GPU): merging
in bf16 rounds the LoRA factors and their product before adding them, and the merged model drifts from the trained
adapter. ``reranker.json`` says how to score with the merged model: vlm, logit(true_token) - logit(false_token) at the
last position of its prompt format (MonoQwen2-VL or Qwen3-VL-Reranker, with the sentence-transformers files of a
Qwen3-VL-Reranker base copied along); text, the single logit of the sequence classifier: the trained 2-label head
(score = logit 1 - logit 0) is folded into one label in float32, so ``sentence_transformers.CrossEncoder(merged)``
(raw scores: its activation is set to Identity in config.json), plain transformers and the ``Reranker`` all give
the trained score; text with ``model.text_scoring: biencoder``, the encoder with the sentence-transformers files
of a mean-pooled, normalised ``SentenceTransformer`` (``models.embed``): its cosine is the trained score over
``biencoder_scale``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from docrerank.core import storage
from docrerank.core.runtime import redact
from docrerank.models.backbones import HEAD_PATHS, classifier_head
from docrerank.train.config import TrainConfig
from docrerank.train.dist import world

if TYPE_CHECKING:
    import torch

PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                   "chat_template.jinja")
# sentence-transformers files of a Qwen3-VL-Reranker base (the LogitScore module's answer ids); copied with its dirs.
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


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

    from docrerank.models.backbones import build_scorer

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


def reranker_card(cfg: TrainConfig, scorer: Any = None) -> dict:
    """How to score with the merged model (read by evaluation and reranking); vlm: the scorer's resolved prompt
    format and answer token ids."""
    m = cfg.model
    if m.backbone == "vlm":
        fmt = scorer.fmt
        card = {"backbone": "vlm", "score": "logit(true_token) - logit(false_token) at the last position",
                "prompt_format": fmt.name, "true_token": fmt.true_token, "false_token": fmt.false_token,
                "true_token_id": int(scorer.answer_ids[0]), "false_token_id": int(scorer.answer_ids[1])}
        card.update({"prompt": fmt.prompt} if fmt.image_first else
                    {"system_prompt": fmt.system, "instruction": fmt.instruction})
        return {**card, "max_pixels": m.max_pixels, "max_seq_len": m.seq_len}
    if m.text_scoring == "biencoder":
        return {"backbone": "text", "text_scoring": "biencoder", "score": "cosine of the query's and the page "
                "text's embeddings (mean-pooled, L2-normalised; a sentence-transformers SentenceTransformer)",
                "max_seq_len": m.seq_len}
    return {"backbone": "text", "score": "logits[:, 0] over (query, page text): the trained 2-label head's "
            "logit 1 - logit 0, folded into one label", "max_seq_len": m.seq_len, "max_windows": m.max_windows,
            "window_overlap": m.window_overlap, "window_pool": m.window_pool}


def fold_two_label_head(model: Any) -> bool:
    """Make a 2-label sequence classifier a 1-label one whose logit is logit 1 - logit 0 (computed in float64, in
    place); its config asks sentence-transformers for raw scores. False (model unchanged) when no 2-output Linear
    head is found."""
    import torch

    found = classifier_head(model, 2)
    if found is None:
        return False
    owner, name, head = found
    w = head.weight.detach().double()
    folded = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None, dtype=head.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_((w[1] - w[0]).unsqueeze(0))
        if head.bias is not None:
            b = head.bias.detach().double()
            folded.bias.copy_((b[1] - b[0]).unsqueeze(0))
    setattr(owner, name, folded)
    model.config.num_labels = 1
    model.config.id2label, model.config.label2id = {0: "relevance"}, {"relevance": 0}
    model.config.problem_type = None
    # CrossEncoder's default for one label is a sigmoid; the trained score is the raw logit difference.
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    return True


def save_local(scorer: torch.nn.Module, cfg: TrainConfig, out: Path, dtype: Optional[torch.dtype] = None,
               metrics: Optional[dict] = None, mix: Optional[dict] = None, where: Optional[str] = None) -> None:
    """Write adapter/, merged/ (with reranker.json and the model card) and train_config.json under the local
    directory ``out``; the merged weights are cast to ``dtype`` after the merge (which runs in the scorer's dtype:
    float32 from ``export_model``). ``metrics``, ``mix``: the final validation metrics and the realised mix, for the
    card; ``where``: the merged model's final location, for the card's usage snippets."""
    from docrerank.train.model_card import model_card

    out.mkdir(parents=True, exist_ok=True)
    model = scorer.model
    if cfg.lora.enabled:
        model.save_pretrained(str(out / "adapter"))
        model = model.merge_and_unload()
    biencoder = cfg.model.backbone == "text" and cfg.model.text_scoring == "biencoder"
    if cfg.model.backbone == "text" and not biencoder and not fold_two_label_head(model):
        raise ValueError(f"model.path={cfg.model.path!r}: no 2-label classification head found at "
                         f"{' / '.join(HEAD_PATHS)} to export")
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
        copy_st_files(Path(scorer.path), merged)
    if biencoder:  # SentenceTransformer(merged): Transformer, mean Pooling, Normalize
        from docrerank.models.embed import write_sentence_transformer_files

        write_sentence_transformer_files(merged, int(model.config.hidden_size), cfg.model.seq_len)
    card = reranker_card(cfg, scorer)
    if cfg.model.backbone == "text":  # sentence-transformers' CrossEncoder truncates at the tokenizer's limit
        set_model_max_length(merged, card["max_seq_len"])
    (merged / "reranker.json").write_text(json.dumps(card, indent=2) + "\n")
    (merged / "README.md").write_text(model_card(cfg, card, metrics, mix, where=where or str(merged)))
    (out / "train_config.json").write_text(json.dumps(redact(cfg.model_dump(mode="json")), indent=2) + "\n")
    storage.honour_umask(str(out))  # save_pretrained writes model.safetensors 0600


def set_model_max_length(merged: Path, max_len: int) -> None:
    """Record the trained token limit as the saved tokenizer's ``model_max_length``: where
    ``sentence_transformers.CrossEncoder(merged)`` (and a plain ``tokenizer(..., truncation=True)``) read it, so
    they truncate as training and the Reranker do instead of at the base model's 512."""
    path = merged / "tokenizer_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["model_max_length"] = int(max_len)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def copy_st_files(base: Path, merged: Path) -> None:
    """The sentence-transformers files of ``base`` (modules.json and each listed module's directory), when it has
    them, so the merged model ships what its base shipped (a Qwen3-VL-Reranker's LogitScore answer ids)."""
    modules = base / "modules.json"
    if not modules.is_file():
        return
    for name in ST_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, merged / name)
    for module in json.loads(modules.read_text()):
        sub = str(module.get("path", "")) if isinstance(module, dict) else ""
        if sub and (base / sub).is_dir() and not (merged / sub).exists():
            shutil.copytree(base / sub, merged / sub)


def upload_dir(local: Path, dest: storage.Location) -> None:
    """Copy every file under ``local`` to ``dest`` (any pyarrow filesystem), each written atomically."""
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.write_bytes_atomic(dest.join(str(f.relative_to(local))), f.read_bytes())


def export_model(state: dict, cfg: TrainConfig, device: str = "cpu", metrics: Optional[dict] = None) -> str:
    """Rebuild the scorer in float32 with the trained ``state``, merge, cast to the dtype trained on ``device`` and
    write it to ``<output>/model`` (the card reads ``metrics`` and ``<output>/mix.json``); returns that URI."""
    from docrerank.models.hub import resolve_dtype

    scorer = load_trained(cfg, state, device, dtype="float32")
    dtype = resolve_dtype(cfg.model.dtype, device)
    out = storage.resolve(cfg.output)
    dest = out.join("model")
    mix_loc = out.join("mix.json")
    mix = json.loads(storage.read_bytes(mix_loc)) if storage.exists(mix_loc) else None
    kw = dict(metrics=metrics, mix=mix, where=dest.join("merged").uri)
    if "://" not in dest.uri:
        save_local(scorer, cfg, Path(dest.path), dtype, **kw)
        return dest.uri
    with tempfile.TemporaryDirectory(prefix="docrerank-export-") as tmp:
        save_local(scorer, cfg, Path(tmp), dtype, **kw)
        upload_dir(Path(tmp), dest)
    return dest.uri
