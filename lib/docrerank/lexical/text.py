"""Text utilities shared by stages: normalisation, content tokens, similarities. Pure and dependency-free."""

from __future__ import annotations

import math
import re
from collections import Counter

STOPWORDS = frozenset(
    """a an the of in on at to for by with from and or as is are was were be been being what which who whom whose
    when where why how did does do has have had its it this that these those than then there their they them
    his her our your my we you i me he she any all each per into over under about between during across
    much many most more less least total amount number value level""".split()
)
_TOKEN = re.compile(r"\$?\d[\d,]*(?:\.\d+)?%?|[A-Za-z][A-Za-z&'\-]*")


def normalize(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: the form used for exact deduplication."""
    t = re.sub(r"\s+", " ", text.strip().lower())
    return t.rstrip(" ?.!")


def _norm_token(tok: str) -> str:
    t = tok.lower().strip("'-")
    if t.endswith("'s"):
        t = t[:-2]
    if t[:1].isdigit() or t[:1] == "$":
        t = t.lstrip("$").rstrip("%").replace(",", "")
        t = t.rstrip("0").rstrip(".") if "." in t else t
    return t


def tokens(text: str) -> list[str]:
    """Normalised word and number tokens ("$1,234.50" -> "1234.5", "Apple's" -> "apple")."""
    return [t for t in (_norm_token(m.group(0)) for m in _TOKEN.finditer(text)) if t]


def content_tokens(text: str) -> list[str]:
    """Tokens that carry content: not stopwords, not one letter."""
    return [t for t in tokens(text) if t not in STOPWORDS and len(t) > 1]


def key_tokens(text: str) -> list[str]:
    """Tokens that pin a question to specific facts: numbers, years, and capitalised words not at the start."""
    out = []
    for i, m in enumerate(_TOKEN.finditer(text)):
        raw = m.group(0)
        t = _norm_token(raw)
        if not t or t in STOPWORDS:
            continue
        if raw[:1].isdigit() or raw[:1] == "$" or (i > 0 and raw[:1].isupper()):
            out.append(t)
    return out


def char_ngrams(text: str, n: int = 3) -> Counter:
    """Counts of the normalised text's character ``n``-grams (padded with a space each side)."""
    t = f" {normalize(text)} "
    return Counter(t[i:i + n] for i in range(max(0, len(t) - n + 1)))


def cosine(a: Counter, b: Counter) -> float:
    """Cosine similarity of two count vectors (0 when either is empty)."""
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def char_similarity(a: str, b: str) -> float:
    """Cosine of character trigram counts: 1 for identical text, near 1 for near-duplicates."""
    return cosine(char_ngrams(a), char_ngrams(b))

