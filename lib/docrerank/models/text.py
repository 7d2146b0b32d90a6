"""The text backbone's scoring for the Reranker: cross-encoder inputs built from token ids, and bi-encoder scores
from each distinct text embedded once.

Cross-encoder: each distinct query and page text of a ``score`` call is tokenized once, a page only as far as
``max_seq_len`` tokens can reach (a prefix of the text, cut at whitespace, so its tokens are the first tokens of the
whole text); a pair is the tokenizer's own pair layout (``[CLS] query [SEP] page [SEP]`` for BERT) truncated as
``tokenizer(query, text, truncation="only_second", max_length=L)`` truncates, which a self-check at load confirms
(any tokenizer whose layout cannot be confirmed is called per batch instead). Pairs are ordered by their exact
token length, so a batch pads a few tokens at most. A query that leaves the page no room keeps half the length.

Bi-encoder: the distinct queries and page texts of a call are embedded once each; a pair's score is the dot product
of its two unit vectors (the cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 8  # first guess of how much text max_seq_len tokens need (about twice what English needs)
_PROBE_QUERY = "what was the total revenue of acme in fiscal 2021?"
_PROBE_TEXT = "Acme Corp. reported revenue of $5.2 billion in fiscal 2021, up 12% from 2020.\nOperating margin: 8%. "


@dataclass(frozen=True)
class PairLayout:
    """Special tokens before, between and after the two sequences of a pair, with the token types of every part
    (types None when the tokenizer gives none)."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[tuple[int, ...], int, tuple[int, ...], int, tuple[int, ...]] | None  # prefix, first, middle, ...

    @property
    def specials(self) -> int:
        """Special tokens a pair carries."""
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def pair_layout(tok) -> PairLayout | None:
    """The tokenizer's pair layout, read off the encoding of two one-token texts; None when it cannot be read."""
    a, b = _ids(tok, "a"), _ids(tok, "b")
    if len(a) != 1 or len(b) != 1 or a == b:
        return None
    enc = tok("a", "b")
    ids = list(enc["input_ids"])
    if ids.count(a[0]) != 1 or ids.count(b[0]) != 1 or ids.index(a[0]) > ids.index(b[0]):
        return None
    i, j = ids.index(a[0]), ids.index(b[0])
    types = None
    if "token_type_ids" in enc:
        t = list(enc["token_type_ids"])
        types = (tuple(t[:i]), t[i], tuple(t[i + 1:j]), t[j], tuple(t[j + 1:]))
    return PairLayout(tuple(ids[:i]), tuple(ids[i + 1:j]), tuple(ids[j + 1:]), types)


class PairEncoder:
    """(query, page text) pairs -> padded model inputs, each distinct text tokenized once; see the module docstring.

    Args:
        tokenizer: the cross-encoder's tokenizer.
        max_seq_len: tokens per pair, special tokens included.

    ``layout`` is None when the tokenizer's pair layout could not be confirmed; ``encode`` then calls the
    tokenizer per pair list (the slow path, same inputs).
    """

    def __init__(self, tokenizer: Any, max_seq_len: int):
        self.tok, self.max_seq_len = tokenizer, max_seq_len
        self.layout = pair_layout(tokenizer)
        if self.layout is not None and self.layout.specials >= max_seq_len - 1:
            raise ValueError(f"max_seq_len: expected more than {self.layout.specials + 1} tokens, got {max_seq_len}")
        if self.layout is not None and not self._agrees():
            self.layout = None

    def _agrees(self) -> bool:
        """Whether pairs built here equal the tokenizer's own on probe pairs: short, cut, and long enough for the
        page to be tokenized from a prefix."""
        width = min(self.max_seq_len, 24)
        budget = width - self.layout.specials
        q = _ids(self.tok, _PROBE_QUERY)
        for text in (_PROBE_TEXT[:10], _PROBE_TEXT, _PROBE_TEXT * 40):
            ref = self.tok(_PROBE_QUERY, text, truncation="only_second", max_length=width)
            ids, types = self._pair(q, self._text_ids(text, budget), budget)
            if ids != list(ref["input_ids"]) or ("token_type_ids" in ref and types != list(ref["token_type_ids"])):
                return False
        return True

    def _text_ids(self, text: str, need: int) -> list[int]:
        """The first ``need`` tokens of ``text`` (no special tokens), tokenizing no more of it than needed."""
        cut = need * CHARS_PER_TOKEN
        while cut < len(text):
            end = max(text.rfind(" ", 0, cut), text.rfind("\n", 0, cut))
            if end <= 0:  # no whitespace to cut at: the whole text
                break
            ids = _ids(self.tok, text[:end])  # cut before whitespace: these are the first tokens of the whole text
            if len(ids) >= need:
                return ids[:need]
            cut *= 2
        return _ids(self.tok, text)[:need]

    def _pair(self, q_ids: list[int], t_ids: list[int], budget: int) -> tuple[list[int], list[int] | None]:
        lay = self.layout
        if len(q_ids) >= budget:  # only_second cannot fit it: the query keeps half
            q_ids = q_ids[: budget // 2]
        t_ids = t_ids[: budget - len(q_ids)]
        ids = [*lay.prefix, *q_ids, *lay.middle, *t_ids, *lay.suffix]
        if lay.types is None:
            return ids, None
        prefix, first, middle, second, suffix = lay.types
        return ids, [*prefix, *[first] * len(q_ids), *middle, *[second] * len(t_ids), *suffix]

    def encode(self, queries: Sequence[str], texts: Sequence[str]) -> list[tuple[list[int], list[int] | None]]:
        """The inputs (ids, token type ids) of ``queries[i]`` with ``texts[i]``; each distinct string tokenized once."""
        if self.layout is None:
            enc = self.tok(list(queries), list(texts), truncation="only_second", max_length=self.max_seq_len)
            types = enc.get("token_type_ids") or [None] * len(queries)
            return [(list(i), None if t is None else list(t)) for i, t in zip(enc["input_ids"], types)]
        budget = self.max_seq_len - self.layout.specials
        q_ids = {q: _ids(self.tok, q) for q in dict.fromkeys(queries)}
        t_ids = {t: self._text_ids(t, budget) for t in dict.fromkeys(texts)}
        return [self._pair(q_ids[q], t_ids[t], budget) for q, t in zip(queries, texts)]

    def batch(self, pairs: Sequence[tuple[list[int], list[int] | None]]) -> dict:
        """Padded torch tensors (``input_ids``, ``attention_mask``, ``token_type_ids`` when used) of ``pairs``."""
        import numpy as np
        import torch

        width = max(len(ids) for ids, _ in pairs)
        pad = self.tok.pad_token_id or 0
        ids = np.full((len(pairs), width), pad, dtype=np.int64)
        mask = np.zeros((len(pairs), width), dtype=np.int64)
        types = np.zeros((len(pairs), width), dtype=np.int64) if pairs[0][1] is not None else None
        left = self.tok.padding_side == "left"
        for r, (p_ids, p_types) in enumerate(pairs):
            span = slice(width - len(p_ids), width) if left else slice(0, len(p_ids))
            ids[r, span] = p_ids
            mask[r, span] = 1
            if types is not None:
                types[r, span] = p_types
        out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if types is not None and "token_type_ids" in self.tok.model_input_names:
            out["token_type_ids"] = torch.from_numpy(types)
        return out


def cross_scores(model: Any, inputs: dict, mode: str, device: str):
    """float32 numpy scores of one batch: logit 1 - logit 0 (``cross``) or the single logit (``cross1``)."""
    import torch

    logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
    scores = logits[:, 1] - logits[:, 0] if mode == "cross" else logits[:, 0]
    return scores.to(torch.float32).cpu().numpy()


def biencoder_scores(embedder: Any, queries: Sequence[str], texts: Sequence[str], batch_size: int):
    """Cosine of each (query, text) pair; every distinct string is embedded once (``embedder``: an ``Embedder``)."""
    import numpy as np

    strings = list(dict.fromkeys([*queries, *texts]))
    vecs = embedder.embed(strings, batch_size)
    row = {s: i for i, s in enumerate(strings)}
    q = vecs[[row[s] for s in queries]]
    t = vecs[[row[s] for s in texts]]
    return np.einsum("ij,ij->i", q, t).astype(np.float32)
