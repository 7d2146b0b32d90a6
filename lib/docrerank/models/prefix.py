"""Shared-page prefix reuse with transformers: encode [image][instruction] once per page, then only the queries.

Requests of one page (hf engine judgements, Reranker pairs) share a long token prefix (system prompt, ~1024 image
tokens, instruction); only the query differs. ``plan_prefix_groups`` (pure) finds groups of requests with the same
images and their longest common token prefix. ``judge_prefix_group`` runs the prefix once with a KV cache, expands
the cache to a batch of continuations, and reads the two answer logits at each continuation's last token;
``shared_prefix_logits`` builds the prefix inputs (``qwen_vl.batch_inputs``) and positions for it. Positions come
from the model's own rope index over the full sequence (M-RoPE for Qwen2-VL-family models,
``qwen_vl.sequence_positions``), so the result equals the plain path up to floating-point error.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from docrerank.models.qwen_vl import batch_inputs


@dataclass
class PrefixGroup:
    """Requests (indices into the batch) that share their first ``prefix_len`` tokens."""

    indices: list
    prefix_len: int


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in seqs[1:]):
            return i
    return n


def plan_prefix_groups(
    seqs: Sequence[Sequence[int]],
    keys: Sequence[Any],
    image_token_id: int | None,
    min_prefix_tokens: int,
) -> tuple[list[PrefixGroup], list[int]]:
    """Split a batch into prefix groups and the rest (which takes the plain path).

    Requests are grouped by ``keys`` (the content hashes of their images, ``()`` for text-only). A group is
    kept when it has two or more requests, a common prefix of at least ``min_prefix_tokens`` tokens that
    contains every image token (the continuations must be text only), and at least one continuation token
    per request (the prefix is shortened by one token where a sequence would otherwise be all prefix).
    """
    by_key: dict[Any, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_key[k].append(i)
    groups, rest = [], []
    for idx in by_key.values():
        if len(idx) < 2:
            rest.extend(idx)
            continue
        members = [seqs[i] for i in idx]
        plen = min(common_prefix_len(members), min(len(s) for s in members) - 1)
        last_image = max((_last_index(s, image_token_id) for s in members), default=-1)
        if plen < min_prefix_tokens or plen <= last_image:
            rest.extend(idx)
            continue
        groups.append(PrefixGroup(indices=idx, prefix_len=plen))
    return groups, sorted(rest)


def _last_index(seq: Sequence[int], token: int | None) -> int:
    if token is None:
        return -1
    for i in range(len(seq) - 1, -1, -1):
        if seq[i] == token:
            return i
    return -1


def cache_kwarg(model: Any) -> str:
    """The name under which ``model``'s forward takes and returns its KV cache: ``cache`` from transformers 5.24
    (``past_key_values`` is deprecated there and removed in 5.40), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def judge_prefix_group(
    model: Any,
    prefix_inputs: dict,
    continuations: Sequence[Sequence[int]],
    continuation_positions: Sequence[Any],
    token_pair: Sequence[int],
    pad_id: int,
    batch_size: int,
) -> Any:
    """Two answer logits (n, 2) for continuations of one shared prefix.

    ``prefix_inputs``: the model inputs of the prefix alone (batch 1: input_ids, attention_mask, position_ids
    and, for images, pixel_values, image_grid_thw, mm_token_type_ids). ``continuation_positions[i]``: the
    position ids of continuation i as in the full sequence, shape (L_i,) or (3, L_i) for M-RoPE.
    Continuations are left-padded after the prefix: [prefix][pad...][continuation], so the last position is
    every row's last real token; the attention mask hides the pads.
    """
    import torch
    from transformers import DynamicCache

    cache_arg = cache_kwarg(model)
    out = model(**prefix_inputs, use_cache=True, logits_to_keep=1)
    kv = [(layer.keys, layer.values) for layer in getattr(out, cache_arg).layers]
    prefix_len = prefix_inputs["input_ids"].shape[1]
    device = prefix_inputs["input_ids"].device
    pair = torch.tensor(list(token_pair), device=device)
    logits = []
    for start in range(0, len(continuations), batch_size):
        conts = continuations[start : start + batch_size]
        poss = continuation_positions[start : start + batch_size]
        b, width = len(conts), max(len(c) for c in conts)
        ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((b, prefix_len + width), dtype=torch.long, device=device)
        mask[:, :prefix_len] = 1
        pos_shape = (poss[0].shape[0], b, width) if poss[0].ndim == 2 else (b, width)
        pos = torch.zeros(pos_shape, dtype=torch.long, device=device)
        for r, (c, p) in enumerate(zip(conts, poss)):
            ids[r, width - len(c) :] = torch.tensor(c, dtype=torch.long, device=device)
            mask[r, prefix_len + width - len(c) :] = 1
            if p.ndim == 2:
                pos[:, r, width - len(c) :] = p.to(device)
            else:
                pos[r, width - len(c) :] = p.to(device)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv],
            config=model.config,
        )
        step = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
            **{cache_arg: cache},
        )
        logits.append(step.logits[:, -1, :].index_select(-1, pair).float())
    return torch.cat(logits, dim=0)


def shared_prefix_logits(model: Any, seqs: Sequence[Sequence[int]], prefix_len: int, positions: Sequence[Any],
                         token_pair: Sequence[int], pad_id: int, batch_size: int, device: Any,
                         image_token_id: int | None = None, pixels: Sequence[tuple[Any, Any]] = (),
                         dtype: Any = None) -> Any:
    """Two answer logits (n, 2) of sequences that share their first ``prefix_len`` tokens, every image token among
    them: the prefix runs once, each continuation against its KV cache, ``batch_size`` at a time.

    ``positions[i]``: the position ids of the whole of ``seqs[i]``, (L_i,) or (3, L_i) for M-RoPE.
    ``pixels``: the prefix's images as ``qwen_vl.batch_inputs`` takes them (pixel values cast to ``dtype``).
    """
    inputs = batch_inputs([list(seqs[0][:prefix_len])], pad_id, image_token_id, pixels, dtype)
    inputs["position_ids"] = positions[0][..., :prefix_len].unsqueeze(-2)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return judge_prefix_group(model, inputs, [s[prefix_len:] for s in seqs], [p[..., prefix_len:] for p in positions],
                              token_pair, pad_id, batch_size)
