"""Normalise and deduplicate candidate queries: exact, near-duplicate, and never equal to the positive."""

from __future__ import annotations

from docrerank.lexical.text import char_similarity, key_tokens, normalize


def dedup(candidates: list[str], positive: str, near_threshold: float = 0.92) -> list[tuple[str, str | None]]:
    """For each candidate (in order) the reason it is dropped, or None when kept.

    Reasons: ``empty``, ``same_as_positive`` (equal or near-equal to the positive), ``duplicate`` (equal to
    an earlier kept candidate), ``near_duplicate`` (character-trigram cosine >= ``near_threshold``).
    Texts whose anchors differ (numbers, years, names: "2020" vs "2021") are never near-duplicates: that
    one token is the whole point of an attribute negative.
    """
    kept: list[tuple[str, frozenset]] = []
    out = []
    pos_n, pos_k = normalize(positive), frozenset(key_tokens(positive))
    for text in candidates:
        n, k = normalize(text), frozenset(key_tokens(text))
        if not n:
            out.append((text, "empty"))
        elif n == pos_n or (k == pos_k and char_similarity(n, pos_n) >= max(near_threshold, 0.97)):
            out.append((text, "same_as_positive"))
        elif any(n == kn for kn, _ in kept):
            out.append((text, "duplicate"))
        elif any(kk == k and char_similarity(n, kn) >= near_threshold for kn, kk in kept):
            out.append((text, "near_duplicate"))
        else:
            kept.append((n, k))
            out.append((text, None))
    return out
