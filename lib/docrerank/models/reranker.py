"""The Reranker API: load a reranker, score (query, page) pairs, rank pages. Plain torch, no Ray.

    from docrerank.models.reranker import Reranker

    rr = Reranker.load("out/train_local")              # a training output, its model/merged, or a base model
    scores = rr.score(["q1", "q2"], [page_a, page_b])  # float32, one per pair
    top = rr.rank("which year ...", pages, top_k=5)    # [(index, score), ...], best first

Backbones (read from the ``reranker.json`` the training job writes beside the merged model, else from the
checkpoint's ``config.json``):

- ``vlm``: a Qwen2-VL-family model scoring logit(True) - logit(False) at the end of the MonoQwen2-VL prompt. A base
  checkpoint (no ``reranker.json``) is the zero-shot baseline of the paper (e.g. Qwen2-VL-2B-Instruct). A
  Qwen3-VL-Reranker (2B/8B) is detected from its files or name and scored in its own format, logit(yes) - logit(no)
  (``models/prompt_format.py``): the strongest open zero-shot baseline.
- ``text``: a cross-encoder over (query, page text layer): a 2-label classifier as trained here (logit 1 - logit 0),
  a 1-label cross-encoder (its logit), or, for a plain encoder without a classification head (the base
  all-MiniLM-L6-v2: the zero-shot baseline; or a bi-encoder trained here, ``model.text_scoring: biencoder``), the
  cosine of mean-pooled embeddings.

Pages may be encoded image bytes, PIL images, page rows (dicts with ``image``/``text``/``page_id``, as in the
project's ``pages`` and ``examples`` tables or a BEIR corpus) or text strings (text backbone only).

Speed: pairs are sorted by input length (vlm: page pixels, then page, then query; text: tokens) and scored
``batch_size`` pairs per forward pass. text (``models/text.py``): each distinct query and page text is tokenized (a
page only as far as ``max_seq_len`` reaches) or, for a bi-encoder, embedded once per call. vlm: within a batch each
distinct page goes through the vision tower once, and page pixels are
prepared by a thread pool ahead of the model. A page with several queries in one call (``min_prefix_pairs``: 2 on
the CPU, a whole batch on a GPU) has its [image][prompt] prefix encoded once, its queries run against the cached
keys and values (``models/prefix.py``). Scores come back in input order, in float32. The model runs in bfloat16 on a
GPU (``dtype="auto"``, any ``cuda:N``), float32 on the CPU. The same inputs always give the same scores (eval mode,
no sampling, a deterministic order). Pages and model directories: ``models/pages.py``; the vlm inputs and scoring:
``VLMScorer`` (``models/backbones.py``) over ``models/qwen_vl.py``, the input path the hf engine uses too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from docrerank.models.pages import Page, as_page, find_model_dir, pixel_count, read_card

log = logging.getLogger(__name__)

DEFAULT_BATCH = {"vlm": 8, "text": 64}
PREFETCH_BATCHES = 4  # vlm: work units whose page pixels are prepared ahead of the forward passes
MIN_PREFIX_PAIRS = 2  # vlm on CPU: a page with this many pairs in one call has its prefix encoded once


class Reranker:
    """Scores (query, page) pairs with a loaded model; see the module docstring."""

    max_seq_len: int  # set by the loaders for the text backbone
    pairs: Any  # text: the pair encoder (``models.text.PairEncoder``), set by the loader

    def __init__(self, model: Any, backbone: str, device: str = "cpu", batch_size: Optional[int] = None,
                 name: str = "reranker", mode: str = "cross"):
        """``model``: a ``VLMScorer`` (vlm) or a ``(tokenizer, model)`` pair (text); ``mode`` (text): ``cross``
        (2-label classifier), ``cross1`` (1-label) or ``biencoder``."""
        self.model, self.backbone, self.device, self.mode, self.name = model, backbone, device, mode, name
        self.batch_size = batch_size or DEFAULT_BATCH[backbone]
        self.forwards = 0  # forward passes run (for benchmarks and tests)
        self.preprocess_threads = min(8, os.cpu_count() or 1)
        self.unscored = 0  # pairs that got NaN (unreadable page images)
        # vlm: encode a page's [image][prompt] prefix once for its queries (formats with the image first)
        self.prefix_reuse = backbone == "vlm" and getattr(getattr(model, "fmt", None), "image_first", True)
        # ... for pages with at least this many pairs in one call. On the CPU (compute-bound) it pays from 2; on a
        # GPU a full batch of whole pairs beats small continuation batches, so only pages with a batch of queries.
        self.min_prefix_pairs: Optional[int] = MIN_PREFIX_PAIRS if device == "cpu" else None
        # text cross-encoders: long pages scored by overlapping windows (models/windows.py), as trained
        self.max_windows, self.window_overlap, self.window_pool = 1, 32, "max"

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str, device: str = "auto", dtype: str = "auto", batch_size: Optional[int] = None,
             max_pixels: Optional[int] = None, max_seq_len: Optional[int] = None,
             attn_implementation: Optional[str] = None, name: Optional[str] = None,
             max_windows: Optional[int] = None) -> "Reranker":
        """Load a reranker from a training output or a base checkpoint (see ``find_model_dir``).

        ``device``: auto (cuda when available), cpu or cuda. ``dtype``: auto (bfloat16 on cuda, float32 on cpu).
        ``max_pixels`` / ``max_seq_len`` default to what the model was trained with (``reranker.json``), else
        1024 visual tokens / 2048 tokens (vlm) and 256 tokens (text). ``max_windows`` (text cross-encoders): windows
        per page, default as trained (``reranker.json``), else 1 (the page truncated).
        """
        from docrerank.models.hub import resolve_device

        device = resolve_device(device)
        model_dir = find_model_dir(path)
        card = read_card(model_dir)
        backbone = card["backbone"]
        name = name or (Path(path).name if Path(path).exists() else path)
        if backbone == "vlm":
            return cls._load_vlm(model_dir, card, device, dtype, batch_size, max_pixels, max_seq_len,
                                 attn_implementation, name)
        rr = cls._load_text(model_dir, card, device, dtype, batch_size, max_seq_len, name)
        rr.max_windows = max_windows or card.get("max_windows") or 1
        rr.window_overlap = card.get("window_overlap", 32)
        rr.window_pool = card.get("window_pool", "max")
        return rr

    @classmethod
    def _load_vlm(cls, model_dir, card, device, dtype, batch_size, max_pixels, max_seq_len, attn, name):
        from docrerank.models.backbones import build_scorer
        from docrerank.models.config import LoraConfig, ModelConfig

        keys = ("prompt_format", "prompt", "instruction", "system_prompt", "true_token", "false_token")
        fields = {k: card[k] for k in keys if card.get(k)}
        cfg = ModelConfig(backbone="vlm", path=str(model_dir), dtype=dtype, gradient_checkpointing=False,
                          max_pixels=max_pixels or card.get("max_pixels") or ModelConfig().max_pixels,
                          max_seq_len=max_seq_len or card.get("max_seq_len"), attn_implementation=attn, **fields)
        scorer = build_scorer(cfg, LoraConfig(enabled=False), device=device)
        trained_ids = (card.get("true_token_id"), card.get("false_token_id"))
        if None not in trained_ids and tuple(scorer.answer_ids) != trained_ids:
            raise ValueError(f"{model_dir}: reranker.json was trained on answer token ids {trained_ids}, this "
                             f"checkpoint's tokenizer gives {tuple(scorer.answer_ids)}")
        log.info("%s: vlm reranker, prompt format %s, answer tokens %s/%s", model_dir, scorer.fmt.name,
                 scorer.fmt.true_token, scorer.fmt.false_token)
        return cls(_inference(scorer, device), "vlm", device, batch_size, name)

    @classmethod
    def _load_text(cls, model_dir, card, device, dtype, batch_size, max_seq_len, name):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        from docrerank.models.hub import resolve_dtype

        torch_dtype = resolve_dtype(dtype, device)
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
        if heads:
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch_dtype,
                                                                       local_files_only=True)
            labels = model.config.num_labels
            if labels not in (1, 2):
                raise ValueError(f"{model_dir}: a text reranker needs 1 or 2 labels, this classifier has {labels}")
            mode = "cross" if labels == 2 else "cross1"
        else:
            from docrerank.models.embed import Embedder

            log.info("%s has no classification head: scoring by embedding cosine (bi-encoder)", model_dir)
            embedder = Embedder.load(str(model_dir), device=device,
                                     max_seq_len=max_seq_len or card.get("max_seq_len"))
            rr = cls((tok, embedder), "text", device, batch_size, name, "biencoder")
            rr.max_seq_len = embedder.max_seq_len
            return rr
        from docrerank.models.text import PairEncoder

        rr = cls((tok, _inference(model, device)), "text", device, batch_size, name, mode)
        rr.max_seq_len = max_seq_len or card.get("max_seq_len") or 256
        rr.pairs = PairEncoder(tok, rr.max_seq_len)
        return rr

    # ----------------------------------------------------------------------------------------- scoring
    def score(self, queries: Union[str, Sequence[str]], pages: Sequence[Any],
              batch_size: Optional[int] = None) -> "Any":
        """float32 scores (numpy array), one per pair: ``queries[i]`` with ``pages[i]``, or one query with every
        page. Higher = more relevant. vlm: a pair whose page has no image or an undecodable one scores NaN (and
        counts in ``unscored``)."""
        import numpy as np

        pages = [as_page(p, i) for i, p in enumerate(pages)]
        if isinstance(queries, str):
            queries = [queries] * len(pages)
        queries = list(queries)
        if len(queries) != len(pages):
            raise ValueError(f"score: {len(queries)} queries for {len(pages)} pages (give one query per page, or "
                             "a single query string)")
        out = np.zeros(len(pages), dtype=np.float32)
        if not pages:
            return out
        bs = batch_size or self.batch_size
        if self.backbone != "vlm":
            if self.mode == "biencoder" or self.max_windows <= 1:
                return self._score_text(queries, pages, bs)
            for idx in self._text_batches(self._window_order(queries, pages), bs):
                out[idx] = self._forward([queries[i] for i in idx], [pages[i] for i in idx])
            return out
        order = self._order(queries, pages)
        # vlm: page pixels are computed once per distinct page, by a thread pool, a window of units ahead of the
        # forward passes (image decoding and resizing overlap the model). A page with several queries is a
        # "prefix" unit (its [image][prompt] prefix is encoded once); the other pairs go in plain batches.
        from concurrent.futures import ThreadPoolExecutor

        units = self._units(order, pages, bs)
        windows = [units[w:w + PREFETCH_BATCHES] for w in range(0, len(units), PREFETCH_BATCHES)]
        with ThreadPoolExecutor(max_workers=1) as lead, ThreadPoolExecutor(self.preprocess_threads) as pool:
            def prepare(window):
                keys = list(dict.fromkeys(pages[i].key for _, idx in window for i in idx))
                first = {pages[i].key: pages[i] for _, idx in window for i in idx}
                return dict(zip(keys, pool.map(lambda k: self._safe_pixels(first[k]), keys)))

            ahead = lead.submit(prepare, windows[0])
            for w in range(len(windows)):
                pixels = ahead.result()
                if w + 1 < len(windows):
                    ahead = lead.submit(prepare, windows[w + 1])
                for kind, idx in windows[w]:
                    bad = [i for i in idx if pixels[pages[i].key] is None]
                    if bad:  # pages that cannot be read: NaN, counted, the rest of the batch is scored
                        out[bad] = np.nan
                        self.unscored += len(bad)
                        idx = [i for i in idx if pixels[pages[i].key] is not None]
                    if not idx:
                        continue
                    qs = [queries[i] for i in idx]
                    if kind == "prefix":
                        out[idx] = self._forward_prefix(qs, pixels[pages[idx[0]].key], bs)
                    else:
                        out[idx] = self._forward(qs, [pages[i] for i in idx], pixels)
        return out

    def _units(self, order: list[int], pages: list[Page], bs: int) -> list[tuple[str, list[int]]]:
        """Work units in ``order``: ("prefix", pairs of one page) for pages with at least ``min_prefix_pairs``
        pairs (default: ``bs``) when prefix reuse is on, ("plain", up to ``bs`` pairs) for the rest."""
        least = self.min_prefix_pairs or bs
        by_key: dict[str, list[int]] = {}
        for i in order:
            by_key.setdefault(pages[i].key, []).append(i)
        units, singles = [], []
        for idx in by_key.values():
            if self.prefix_reuse and len(idx) >= least:
                units.append(("prefix", idx))
            else:
                singles += idx
        units += [("plain", singles[s:s + bs]) for s in range(0, len(singles), bs)]
        return units

    def _safe_pixels(self, page: Page):
        """The page's pixels, or None (logged) when it has no image or the image cannot be decoded."""
        try:
            return self.model.page_pixels(page.image, page.key)
        except Exception as e:  # noqa: BLE001 - a bad page must not end a whole scoring run
            log.warning("page %s cannot be scored: %s: %s", page.key, type(e).__name__, e)
            return None

    def rank(self, query: str, pages: Sequence[Any], top_k: Optional[int] = None,
             first_scores: Optional[Sequence[float]] = None, fusion_weight: Optional[float] = None,
             fusion: str = "interpolate") -> list[tuple[int, float]]:
        """``(index, score)`` of the best ``top_k`` pages (all by default): score descending, ties by index.

        With ``first_scores`` (the first stage's score of each page) and ``fusion_weight`` (the reranker's share,
        chosen on validation data, e.g. by ``jobs.evaluate``'s ``fusion``), the scores are fused with the first
        stage's (``retrieval/fusion.py``: ``interpolate`` or ``rrf``) before ranking."""
        scores = self.score(query, pages)
        if fusion_weight is not None:
            from docrerank.retrieval.fusion import fuse

            if first_scores is None or len(first_scores) != len(pages):
                raise ValueError(f"rank: fusion_weight needs first_scores, one per page ({len(pages)}), got "
                                 f"{None if first_scores is None else len(first_scores)}")
            ids = [str(i) for i in range(len(pages))]
            rer = {d: float(s) for d, s in zip(ids, scores) if s == s}
            fused = fuse(dict(zip(ids, map(float, first_scores))), rer, fusion_weight, fusion)
            scores = [fused.get(d, float("nan")) for d in ids]
        key = [float("-inf") if s != s else float(s) for s in scores]  # NaN (unscorable) ranks last
        ranked = sorted(range(len(scores)), key=lambda i: (-key[i], i))
        return [(i, float(scores[i])) for i in ranked[:top_k]]

    # ----------------------------------------------------------------------------------------- internals
    def _order(self, queries: list[str], pages: list[Page]) -> list[int]:
        """vlm: pair indices sorted by page pixels (similar inputs batch together), then page (pairs that share a
        page sit together), then query length; deterministic (ties by index)."""
        pixels: dict[str, int] = {}
        for p in pages:
            if p.key not in pixels:
                pixels[p.key] = pixel_count(p)
        return sorted(range(len(pages)), key=lambda i: (pixels[pages[i].key], pages[i].key, len(queries[i]), i))

    def _window_order(self, queries: list[str], pages: list[Page]) -> list[int]:
        """text with windows: pair indices sorted by window count, then input length (little padding); sets
        ``self._windows`` (windows per pair) for ``_text_batches``. Deterministic (ties by index)."""
        from docrerank.models.windows import window_count

        tok = self.model[0]
        qlen = [len(x) for x in tok(queries, add_special_tokens=False)["input_ids"]]
        plen = {}
        for p in pages:
            if p.key not in plen:
                plen[p.key] = len(tok(p.text or "", add_special_tokens=False)["input_ids"])
        self._windows = [window_count(plen[p.key], q, self.max_seq_len, self.max_windows, self.window_overlap)
                         for q, p in zip(qlen, pages)]
        return sorted(range(len(pages)), key=lambda i: (self._windows[i], min(qlen[i] + plen[pages[i].key],
                                                                              self.max_seq_len), i))

    def _text_batches(self, order: list[int], bs: int) -> list[list[int]]:
        """Pairs in ``order`` cut into batches of at most ``bs`` sequences (a pair counts its windows; a pair's
        windows never straddle two batches)."""
        batches, cur, size = [], [], 0
        for i in order:
            n = self._windows[i]
            if cur and size + n > bs:
                batches.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += n
        return batches + ([cur] if cur else [])

    def _score_text(self, queries: list[str], pages: list[Page], bs: int):
        """text without windows: a bi-encoder embeds each distinct query and page text once; a cross-encoder
        tokenizes each once and runs the pairs sorted by token length, ``bs`` per forward pass (``models/text.py``)."""
        import numpy as np
        import torch

        from docrerank.models.text import biencoder_scores, cross_scores

        texts = [p.text or "" for p in pages]
        model = self.model[1]
        if self.mode == "biencoder":
            self.forwards += -(-len(set(queries) | set(texts)) // bs)
            return biencoder_scores(model, queries, texts, bs)
        pairs = self.pairs.encode(queries, texts)
        order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), i))
        out = np.zeros(len(pairs), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                out[idx] = cross_scores(model, self.pairs.batch([pairs[i] for i in idx]), self.mode, self.device)
                self.forwards += 1
        return out

    def _forward(self, queries: list[str], pages: list[Page], pixels: Optional[dict] = None):
        """Scores of one batch of pairs (one forward pass); ``pixels``: precomputed page pixels by page key."""
        import torch

        self.forwards += 1
        with torch.inference_mode():
            if self.backbone == "vlm":
                return self._forward_vlm(queries, pages, pixels)
            return self._forward_text(queries, pages)

    def _forward_prefix(self, queries: list[str], page_pixels, bs: int):
        """Scores of several queries on one page: the [image][prompt] prefix encoded once (KV cache), each
        query's tokens run against it, ``bs`` at a time; equal to the plain path up to rounding."""
        import torch

        self.forwards += 1 + (len(queries) + bs - 1) // bs
        with torch.inference_mode():
            return self.model.score_shared_page(queries, page_pixels, bs, self.device).cpu().numpy()

    def _forward_vlm(self, queries: list[str], pages: list[Page], pixels: Optional[dict] = None):
        """Scores of one batch: each distinct page's pixels once (from ``pixels`` by page key when given)."""
        keys: dict[str, int] = {}
        uniq: list[Page] = []
        for p in pages:
            if p.key not in keys:
                keys[p.key] = len(uniq)
                uniq.append(p)
        pre = [pixels[p.key] if pixels else self.model.page_pixels(p.image, p.key) for p in uniq]
        return self.model.score_pairs(queries, [keys[p.key] for p in pages], pre, self.device).float().cpu().numpy()

    def _forward_text(self, queries: list[str], pages: list[Page]):
        """Scores of one batch of text pairs (one forward pass)."""
        from docrerank.models.text import biencoder_scores, cross_scores

        texts = [p.text or "" for p in pages]
        if self.mode == "biencoder":  # model: an Embedder (unit rows: cosine = dot product)
            return biencoder_scores(self.model[1], queries, texts, len(queries) + len(texts))
        if self.max_windows <= 1:
            return cross_scores(self.model[1], self.pairs.batch(self.pairs.encode(queries, texts)), self.mode,
                                self.device)
        import torch

        from docrerank.models.windows import encode_pairs, pool_windows

        tok, model = self.model
        enc = encode_pairs(tok, queries, texts, self.max_seq_len, self.max_windows, self.window_overlap)
        window_of = enc.pop("window_of")
        logits = model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
        scores = logits[:, 1] - logits[:, 0] if self.mode == "cross" else logits[:, 0]
        scores = pool_windows(scores, window_of.to(scores.device), self.window_pool)
        return scores.to(torch.float32).cpu().numpy()


def _inference(model, device: str):
    """``model`` in eval mode on ``device`` with every parameter frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()
