"""Vocabulary swaps of the ``rules`` engine: a metric, a business segment or a role of a person in the query is
replaced by another of its family (``lexical.lexicon``) that the corpus uses and the page does not show.

A term is swapped only where it stands as that term: not inside a name ("Traveler's Insurance Company"), not as
part of a longer noun ("fixed asset turnover ratio"), a segment only next to a word that makes it one ("the
cloud segment"), and never when the query defines it or repeats it in its instructions ("Inventory turnover
ratio is defined as: ..."): the rewrite would contradict its own definition.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from docrerank.lexical.lexicon import SEGMENT_CUES
from docrerank.lexical.spans import YEAR, Vocabulary
from docrerank.lexical.text import STOPWORDS
from docrerank.lexical.values import on

PER_ATTRIBUTE = 6  # rewrites per attribute (different values), before the round robin


@dataclass(frozen=True)
class Rewrite:
    """One rewritten query and the attribute it changed."""

    text: str
    attribute: str


def plural(term: str) -> bool:
    """Whether a term is (most likely) plural: "dividends", "judges", not "business" or "analysis"."""
    last = term.split()[-1].lower()
    return last.endswith("s") and not last.endswith(("ss", "is", "us"))


def _used(term: str, vocab: Vocabulary) -> bool:
    """Whether the corpus uses a term, in this number or the other ("investigators" when it says "investigator")."""
    t = term.lower()
    return t in vocab.text_terms or t[:-1] in vocab.text_terms or t + "s" in vocab.text_terms


def term_slot(q: str, start: int, end: int, attribute: str) -> bool:
    """Whether a vocabulary term found at ``q[start:end]`` stands alone (see the module doc)."""
    before = re.findall(r"[\w'’&-]+", q[:start])[-1:]
    after = re.findall(r"[\w'’&-]+", q[end:])[:1]
    if q[start].isupper() and q.upper() != q and (before and before[0][0].isupper() or after and after[0][0].isupper()):
        return False
    if attribute == "business_segment":
        return bool(after and after[0].lower() in SEGMENT_CUES or before and before[0].lower() in SEGMENT_CUES)
    if attribute == "color":  # "the blue bar", "in red box"; not "Orange" of a name ("Orange County")
        return q[start].islower() or q.upper() == q
    if attribute == "reference":  # "figures" in "How many figures ...", not "Figure 4" nor "the Appendix" (names)
        return (q[start].islower() or q.upper() == q) and not (after and after[0][0].isdigit())
    if attribute == "person":  # a role is a noun of its own: "the defendant", "which judges' opinions"
        return not (after and after[0][0].isupper() and q.upper() != q)
    left_ok = not before or before[0].lower() in STOPWORDS or before[0].lower().endswith(("'s", "’s")) \
        or bool(YEAR.fullmatch(before[0])) or before[0].lower() in ("fiscal", "annual", "quarterly", "its", "their")
    right_ok = not after or after[0].lower() in STOPWORDS or after[0][0].isdigit() or not after[0][0].isalpha()
    return left_ok and right_ok


def swap_terms(q: str, page: str, attribute: str, families, vocab: Vocabulary | None, rng: random.Random,
               counts: Counter, ranges: list[tuple[int, int]]) -> list[Rewrite]:
    """Rewrites with the query's (longest) term of a vocabulary replaced by another of its family that the
    corpus uses (any value for a user attribute: ``vocab`` None), of the same grammatical number, that the page
    does not show. ``ranges``: where the query may change (``rules.editable_ranges``)."""
    low = q.lower()
    terms = sorted(((t, fam) for fam in families for t in fam), key=lambda x: -len(x[0]))
    for term, family in terms:  # longest match first ("total revenue" before "revenue")
        m = re.search(rf"(?<![\w-]){re.escape(term.lower())}(?![\w-])", low)
        if not m or not any(a <= m.start() and m.end() <= b for a, b in ranges):
            continue
        if vocab is not None and not term_slot(q, m.start(), m.end(), attribute):
            continue
        elsewhere = [x for x in re.finditer(rf"(?<![\w-]){re.escape(term.lower())}(?![\w-])", low)
                     if not any(a <= x.start() and x.end() <= b for a, b in ranges)]
        if elsewhere:  # "... inventory turnover ratio? Inventory turnover ratio is defined as: ..."
            counts[f"{attribute}:defined_in_query"] += 1
            return []
        pool = [t for t in family if t.lower() not in low and term.lower() not in t.lower()
                and t.lower() not in term.lower() and (vocab is None or _used(t, vocab))
                and (vocab is None or plural(t) == plural(term))]
        if not pool:
            counts[f"{attribute}:no_same_type_value"] += 1
            return []
        fresh = [t for t in pool if not on(t, page)]
        if not fresh:
            counts[f"{attribute}:value_on_page"] += 1
            return []
        rng.shuffle(fresh)
        span = q[m.start():m.end()]
        out = []
        for t in fresh[:PER_ATTRIBUTE]:
            new = t.upper() if span.isupper() and len(span) > 1 else (t[:1].upper() + t[1:] if span[:1].isupper()
                                                                          else t)
            out.append(Rewrite(q[:m.start()] + new + q[m.end():], attribute))
        return out
    return []
