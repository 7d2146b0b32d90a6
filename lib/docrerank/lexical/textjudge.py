"""The ``text`` judge: is a query answerable from a page, judged from the page's text layer alone.

Two "prompts", like the VLM verifier's two phrasings, each an estimate that the page answers the query.
Both are damped by the query's *anchors* (numbers, years, capitalised names): a page can only answer a
question about Apple in 2020 if "Apple" and "2020" occur on it, so each missing anchor multiplies the
estimate by ``MISSING_ANCHOR`` (0.25).
  A  novelty:  share of the query's *new* content words found on the page (for a negative: words not in
               its positive; for a positive: all its content words). A negative that changed 2021 to 2020
               on a page whose table has a 2020 column scores 1.0: the page may well answer it.
  B  coverage: share of all the query's content words found on the page, to the power 1.5.
A positive is kept when both are high, a negative when both are low. 0.5 when there is nothing to measure
(no text layer). Words of six letters or more match on their first six (a crude stemmer). Limits: lexical only (no synonyms, no reading of charts or scans), so it is a cheap
pre-filter in front of a VLM judge, and the judge of model-free runs.
"""

from __future__ import annotations

import re

from docrerank.lexical.text import content_tokens, key_tokens, tokens

UNKNOWN = 0.5
MISSING_ANCHOR = 0.25


def page_vocabulary(page_text: str) -> set[str]:
    """Normalised tokens of a page, plus joined number forms ("5,230.3" and "5230.3")."""
    return set(tokens(page_text)) | set(tokens(re.sub(r"(?<=\d),(?=\d)", "", page_text)))


STEM = 6  # words this long or longer match on their first STEM letters ("headquartered" ~ "headquarters")


def _stems(vocab: set[str]) -> set[str]:
    return {t[:STEM] for t in vocab if len(t) >= STEM and t[0].isalpha()}


def _found(t: str, vocab: set[str], stems: set[str]) -> bool:
    return t in vocab or (len(t) >= STEM and t[0].isalpha() and t[:STEM] in stems)


def _share(needles: list[str], vocab: set[str], stems: set[str]) -> float:
    return sum(_found(t, vocab, stems) for t in needles) / len(needles) if needles else 1.0


def judge_text(query: str, page_text: str, parent: str | None = None) -> tuple[float, float]:
    """(p_A, p_B): two estimates that ``page_text`` answers ``query`` (see module doc)."""
    if not page_text or not page_text.strip():
        return UNKNOWN, UNKNOWN
    vocab = page_vocabulary(page_text)
    stems = _stems(vocab)
    words = content_tokens(query)
    new = words if parent is None else [w for w in words if w not in set(content_tokens(parent))]
    damp = MISSING_ANCHOR ** sum(not _found(t, vocab, stems) for t in set(key_tokens(query)))
    p_a = (_share(new, vocab, stems) if new else UNKNOWN) * damp
    p_b = _share(words, vocab, stems) ** 1.5 * damp
    return p_a, p_b
