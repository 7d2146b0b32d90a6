"""Long pages for the text backbone: overlapping token windows of the page, one score per (query, page) pair.

A cross-encoder holds ``max_seq_len`` tokens; a real page runs to 500-900. Truncation judges the page by its first
lines only. With ``max_windows`` > 1 each pair becomes up to that many sequences ``[CLS] query [SEP] passage [SEP]``,
the passages overlapping by ``overlap`` tokens and covering the page from its start; the pair's score is the best
window's (MaxP) or, ``pool="logsumexp"``, a smooth maximum. Every window of a pair goes into the same forward pass,
so the pooling sees them all. The training scorer (``models/backbones.py``) and the Reranker (``models/reranker.py``)
share these two functions, so a model is scored as it was trained (``reranker.json`` records the settings).

torch is imported inside the functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

POOLS = ("max", "logsumexp")
MIN_PAGE_TOKENS = 8  # a window keeps at least this many page tokens, even after a very long query


def encode_pairs(tokenizer: Any, queries: Sequence[str], texts: Sequence[str], max_len: int, max_windows: int = 1,
                 overlap: int = 0) -> dict[str, Any]:
    """Padded model inputs of (query, page text) pairs; with ``max_windows`` > 1 one row per window plus
    ``window_of`` (LongTensor: the pair of each row, rows of a pair consecutive and in page order).

    ``max_windows`` = 1 truncates the page to what fits after the query (the query is never truncated unless it
    leaves fewer than 8 page tokens). A page shorter than one window gives one row.
    """
    if len(queries) != len(texts):
        raise ValueError(f"encode_pairs: {len(queries)} queries for {len(texts)} page texts")
    if max_windows < 1:
        raise ValueError(f"max_windows: expected >= 1, got {max_windows}")
    queries = _fit_queries(tokenizer, list(queries), max_len)
    texts = [t or "" for t in texts]
    if max_windows == 1:
        return dict(tokenizer(queries, texts, truncation="only_second", max_length=max_len, padding=True,
                              return_tensors="pt"))
    import torch

    budget = max_len - max(_lengths(tokenizer, queries)) - 3  # page tokens per window for the longest query
    stride = max(0, min(overlap, budget // 2))  # the tokenizer needs stride < the page tokens of a window
    enc = tokenizer(queries, texts, truncation="only_second", max_length=max_len, stride=stride,
                    return_overflowing_tokens=True, padding=False)
    owner = list(enc["overflow_to_sample_mapping"])
    keep, seen = [], [0] * len(queries)
    for row, pair in enumerate(owner):
        if seen[pair] < max_windows:
            keep.append(row)
            seen[pair] += 1
    cols = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in enc]
    padded = tokenizer.pad({c: [enc[c][r] for r in keep] for c in cols}, padding=True, return_tensors="pt")
    out = dict(padded)
    out["window_of"] = torch.tensor([owner[r] for r in keep], dtype=torch.long)
    return out


def pool_windows(scores: torch.Tensor, window_of: torch.Tensor, pool: str = "max") -> torch.Tensor:
    """One score per pair from the scores of its windows: the maximum, or ``logsumexp`` (a smooth maximum whose
    gradient reaches every window, weighted by its softmax share)."""
    if pool not in POOLS:
        raise ValueError(f"window pool: got {pool!r}, expected one of {list(POOLS)}")
    mat, _ = padded_groups(scores, window_of, float("-inf"))
    if pool == "max":
        return mat.max(dim=1).values
    return mat.logsumexp(dim=1)


def padded_groups(values: torch.Tensor, group_index: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, K) matrix of ``values`` by group (K = largest group) padded with ``fill``, and its validity mask."""
    import torch

    if values.dim() != 1 or group_index.shape != values.shape:
        raise ValueError(f"padded_groups: expected 1-D values and group_index of one shape, got "
                         f"{tuple(values.shape)} and {tuple(group_index.shape)}")
    g = int(group_index.max()) + 1 if group_index.numel() else 0
    counts = torch.bincount(group_index, minlength=g)
    k = int(counts.max()) if g else 0
    order = torch.argsort(group_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(len(group_index), device=group_index.device) - starts[group_index[order]]
    out = torch.full((g, k), fill, dtype=values.dtype, device=values.device)
    mask = torch.zeros((g, k), dtype=torch.bool, device=values.device)
    out[group_index[order], col] = values[order]
    mask[group_index[order], col] = True
    return out, mask


def window_count(page_tokens: int, query_tokens: int, max_len: int, max_windows: int, overlap: int) -> int:
    """Windows ``encode_pairs`` makes for a page of ``page_tokens`` tokens after a query of ``query_tokens`` (for
    batching by windows without tokenizing twice)."""
    if max_windows <= 1:
        return 1
    budget = max(MIN_PAGE_TOKENS, max_len - query_tokens - 3)
    stride = max(0, min(overlap, budget // 2))
    if page_tokens <= budget:
        return 1
    return min(max_windows, 1 + math.ceil((page_tokens - budget) / (budget - stride)))


def _lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _fit_queries(tokenizer: Any, queries: list[str], max_len: int) -> list[str]:
    """The queries, each cut to leave at least ``MIN_PAGE_TOKENS`` page tokens in a window (rare: a query of
    nearly ``max_len`` tokens; the tokenizer would fail on it)."""
    limit = max_len - 3 - MIN_PAGE_TOKENS
    lengths = _lengths(tokenizer, queries)
    if max(lengths, default=0) <= limit:
        return queries
    out = []
    for q, n in zip(queries, lengths):
        if n > limit:
            ids = tokenizer(q, add_special_tokens=False)["input_ids"][:limit]
            q = tokenizer.decode(ids)
        out.append(q)
    return out
