"""The ``rules`` engine: model-free hard negatives by changing exactly one typed attribute of a positive query.

Attributes: ``year`` (years, fiscal years, quarters, months of dates), ``numeric_value`` (percentages, money,
scaled and plain numbers), ``reference`` (the table, figure, section, chapter or page a question points to),
``company`` (organisations), ``place``, ``person`` (names, and roles such as defendant or judge), ``product``
(named products, model codes), ``name`` (a capitalised name nothing types, "Latinos", "USB", "ChatGPT": replaced
by a name of its shape that the corpus shows on the same pages, so of its document and mostly of its kind), the
kinds of document parts a question counts ("How many figures ..." -> "How many tables ..."), ``color`` (of a bar,
a box, a line: "the blue bar" -> "the red bar"), and the metric vocabularies ``financial_metric``, ``subject_metric``,
``business_segment``; plus user attributes (a name and values to swap between). A span is changed only when
its kind is known (``lexical.spans``), and only for a value of the same kind that the corpus holds (the build's
vocabulary of its own pages, ``lexical.values``). Values the page shows are avoided: a question about them would
likely be answerable. Years that form a period ("FY2017 - FY2019") and chained references ("page 15 and page
16") move together; when the query's definition or instructions name its years ("defined as: FY2019 revenue /
...") every year moves with them. Every occurrence of a changed name in the query changes, nothing else does;
case (ALL CAPS), possessives, "the" and "a/an" follow the new value. Spans in answer instructions ("Round your
answer to two decimal places", "... is defined as: ...") are never changed. What it does not change it counts,
by reason: ``untyped_span``, ``reference`` (numbers of things that are not document parts: error codes, IDs),
``small_count``, ``date`` (a day of a month), ``no_same_type_value``, ``value_on_page``, ``defined_in_query``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from docrerank.lexical.lexicon import (
    BUSINESS_SEGMENTS,
    COLORS,
    DOC_OBJECTS,
    FINANCIAL_METRICS,
    ROLES,
    SENTENCE_START,
    SUBJECT_METRICS,
)
from docrerank.lexical.spans import (
    CODE,
    MONTH,
    NUMBER,
    NUMBER_KINDS,
    QUARTER,
    REFERENCE,
    REFERENCE_WORDS,
    SMALL_COUNT,
    YEAR,
    Span,
    Vocabulary,
    _not_a_code,
    all_caps,
    month_of,
    number_key,
    number_kind,
    number_value,
    own_kind,
    reference_of,
    runs,
)
from docrerank.lexical.terms import PER_ATTRIBUTE, Rewrite, plural, swap_terms
from docrerank.lexical.text import normalize
from docrerank.lexical.values import (
    CHAIN,
    month_on,
    month_values,
    name_values,
    number_values,
    on,
    quarter_values,
    shifted,
    takes_the,
)

FINANCE_ATTRIBUTES = ("year", "company", "numeric_value", "financial_metric", "subject_metric", "business_segment")
ATTRIBUTES = FINANCE_ATTRIBUTES + ("place", "person", "product", "reference", "name", "color")
KINDS = {"year": ("year", "quarter", "month"), "numeric_value": NUMBER_KINDS, "company": ("company",),
         "place": ("place",), "person": ("person",), "product": ("product",), "reference": ("reference",),
         "name": ("name",)}
TERMS = {"financial_metric": FINANCIAL_METRICS, "subject_metric": SUBJECT_METRICS, "business_segment": BUSINESS_SEGMENTS,
         "color": COLORS}
_INSTRUCTION = re.compile(r"(?:answer|round|write|return|give|directly|enumerate|calculate|base|approach|use|using|"
                          r"assume|please|express|provide|list the|here'?s|you are|the answer|for example)\b", re.I)
_UNIT_WORDS = frozenset("usd eur gbp us fy q".split())
_ASIDE = re.compile(r"\s*\((?:formerly|previously|now|f/k/a)\b[^)]*\)", re.I)
_MONTH_BEFORE = re.compile(r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+$")

__all__ = ["ATTRIBUTES", "FINANCE_ATTRIBUTES", "Rewrite", "UserAttribute", "Vocabulary", "question_spans", "rewrite"]


@dataclass(frozen=True)
class UserAttribute:
    """A user-defined attribute: values that can replace each other (e.g. product names)."""

    name: str
    description: str
    examples: tuple[str, ...]


def _rng(*keys) -> random.Random:
    return random.Random(int(hashlib.sha256("|".join(map(str, keys)).encode()).hexdigest()[:16], 16))


def editable_ranges(q: str) -> list[tuple[int, int]]:
    """Where a query may change: its sentences, less answer instructions and definitions (after an
    instruction's colon, the question it introduces is editable). The whole query when nothing is left."""
    bounds = [0] + [m.end() for m in re.finditer(r"[?!]+|\.(?=\s+[A-Z\"'(])", q)] + [len(q)]
    out = []
    for s, e in zip(bounds, bounds[1:]):
        body = q[s:e].strip()
        if not body or "defined as" in body.lower():
            continue
        lead = s + len(q[s:e]) - len(q[s:e].lstrip())
        if _INSTRUCTION.match(body):
            c = body.find(":")
            if c >= 0 and body[c + 1:].strip():
                out.append((lead + c + 1, e))
            continue
        out.append((lead, e))
    return out or [(0, len(q))]


def question_spans(q: str, vocab: Vocabulary, counts: Counter | None = None) -> list[Span]:
    """The typed spans of a query that may change; what cannot be typed is counted into ``counts``."""
    counts = counts if counts is not None else Counter()
    ranges = editable_ranges(q)
    spans: list[Span] = []
    taken = [(m.start(), m.end()) for m in _ASIDE.finditer(q)]  # "(formerly known as Square)" goes with its name

    def free(s, e):
        return any(a <= s and e <= b for a, b in ranges) and not any(s < b and a < e for a, b in taken)

    def add(span):
        if free(span.start, span.end):
            spans.append(span)
            taken.append((span.start, span.end))

    for m in REFERENCE.finditer(q):
        add(Span(m.start(), m.end(), m.group(0), "reference", reference_of(m)[0]))
    for m in YEAR.finditer(q):
        add(Span(m.start(), m.end(), m.group(0), "year", m.group(1) or m.group(3) or ""))
    for m in QUARTER.finditer(q):
        add(Span(m.start(), m.end(), m.group(0), "quarter"))
    for m in MONTH.finditer(q):
        if month_of(m):
            add(Span(m.start(), m.end(), m.group(0), "month", month_of(m)))
    for m in CODE.finditer(q):
        if not _not_a_code(m) and free(m.start(), m.end()):
            add(Span(m.start(), m.end(), m.group(0), "product", "code"))
    last_ref = -10
    for m in NUMBER.finditer(q):
        if not free(m.start(), m.end()):
            continue
        before = q[:m.start()].split()[-1:]
        word = before[0].lower().strip("(,") if before else ""
        chained = word in ("and", "or", "to", "-", "&") and m.start() - last_ref < 12
        ident = number_kind(m) == "plain" and not m.group("dec") and "," not in m.group("num") and len(m.group("num")) >= 5
        if word in REFERENCE_WORDS or (before and before[0].endswith("#")) or chained or ident:
            counts["numeric_value:reference"] += 1
            taken.append((m.start(), m.end()))
            last_ref = m.end()
        elif _MONTH_BEFORE.search(q[:m.start()]):
            counts["numeric_value:date"] += 1
            taken.append((m.start(), m.end()))
        elif number_kind(m) == "plain" and not m.group("dec") and number_value(m) <= SMALL_COUNT:
            counts["numeric_value:small_count"] += 1
        else:
            add(Span(m.start(), m.end(), m.group(0), number_kind(m), number_key(m)))
    upper = q.upper() == q
    for s, e, phrase in (_caps_names(q, vocab) if upper else runs(q)):
        if not free(s, e) or (" " not in phrase and phrase.lower() in REFERENCE_WORDS | _UNIT_WORDS):
            continue
        kind = own_kind(phrase, q[:s], q[e:]) or vocab.kind_of(phrase)
        other = vocab.other_name(phrase) if kind is None else None
        if kind is None and other is None:
            counts["name:untyped_span"] += 1
        add(Span(s, e, phrase, kind or ("name" if other else None), other))
    return sorted((sp for sp in spans if sp.kind is not None), key=lambda sp: sp.start)


def _caps_names(q: str, vocab: Vocabulary) -> list[tuple[int, int, str]]:
    """In an ALL-CAPS query every word is capitalised: names are the word n-grams the corpus knows."""
    words = [m for m in re.finditer(r"[A-Z0-9][A-Z0-9&'.\-]*", q) if m.group(0).lower() not in SENTENCE_START]
    out, i = [], 0
    while i < len(words):
        for n in (4, 3, 2, 1):
            if i + n <= len(words):
                s, e = words[i].start(), words[i + n - 1].end()
                phrase = re.sub(r"'S$", "", q[s:e])
                if vocab.kind_of(phrase):
                    out.append((s, s + len(phrase), phrase))
                    i += n
                    break
        else:
            i += 1
    return out


def _groups(q: str, spans: list[Span]) -> list[list[Span]]:
    """Years and references in runs that go together ("FY2017 - FY2019", "page 15 and page 16"); every year of
    the query in one group when its definition or instructions name a year too (they must move together)."""
    out: list[list[Span]] = []
    for sp in spans:
        prev = out[-1][-1] if out else None
        if prev and sp.kind == prev.kind and sp.scale == prev.scale and sp.kind in ("year", "reference") \
                and CHAIN.fullmatch(q[prev.end:sp.start]):
            out[-1].append(sp)
        else:
            out.append([sp])
    years = [m for m in YEAR.finditer(q)]
    if len(years) > sum(len(g) for g in out if g[0].kind == "year") and any(g[0].kind == "year" for g in out):
        whole = [Span(m.start(), m.end(), m.group(0), "year", m.group(1) or m.group(3) or "") for m in years]
        out = [g for g in out if g[0].kind != "year"] + [whole]
    return out


def _fit(value: str, span: Span, q: str) -> str:
    """``value`` in the case style of the span and the query."""
    if q.upper() == q:
        return value.upper()
    if all_caps(value) and len(value) > 4 and not all_caps(span.text):
        return value.title()
    return value


def _apply(q: str, old: str, new: str) -> str:
    """``q`` with every occurrence of ``old`` replaced by ``new``, "the" and "a/an" kept in agreement."""
    out, last = [], 0
    for m in re.finditer(rf"(?<![\w]){re.escape(old)}(?![\w])", q):
        head = q[last:m.start()]
        if re.search(r"\b[Tt]he $", head) and not takes_the(new) and takes_the(old):
            head = head[:-4]
        art = re.search(r"\b([Aa]n?) $", head)
        if art and new[:1].isalpha():
            a = "an" if new[0].lower() in "aeiou" else "a"
            head = head[:art.start(1)] + (a.capitalize() if art.group(1)[0] == "A" else a) + " "
        out += [head, new]
        last = m.end()
    return "".join(out + [q[last:]])


def _at(q: str, spans: list[Span], texts: list[str]) -> str:
    """``q`` with each span replaced by its new text (spans in order, not overlapping)."""
    out, last = [], 0
    for sp, t in zip(spans, texts):
        out += [q[last:sp.start], t]
        last = sp.end
    return "".join(out + [q[last:]])


def _swap_group(q: str, page: str, attribute: str, group: list[Span], vocab: Vocabulary,
                counts: Counter) -> list[Rewrite]:
    """Rewrites that move a period (years) or a chain of references together, nearest shift first."""
    old = {sp.text for sp in group}
    ways = [(d, texts, values) for d, texts, values in shifted(group, vocab)
            if all(not on(t, q) for t in texts if t not in old)]
    if not ways:
        counts[f"{attribute}:no_same_type_value"] += 1
        return []
    fresh = [(texts, values) for _, texts, values in ways
             if not any(on(v if group[0].kind == "year" else t, page) for t, v in zip(texts, values) if t not in old)]
    if not fresh:
        counts[f"{attribute}:value_on_page"] += 1
        return []
    return [Rewrite(_at(q, group, texts), attribute) for texts, _ in fresh[:PER_ATTRIBUTE]]


def _swap_spans(q: str, page: str, attribute: str, spans: list[Span], vocab: Vocabulary, rng: random.Random,
                counts: Counter) -> list[Rewrite]:
    out = []
    for group in _groups(q, spans):
        span = group[0]
        if span.kind in ("year", "reference"):
            out += _swap_group(q, page, attribute, group, vocab, counts)
            continue
        if span.kind == "quarter":
            pool = quarter_values(span, vocab)
        elif span.kind == "month":
            pool = month_values(span, vocab)
        elif span.kind in NUMBER_KINDS:
            pool = number_values(span, vocab)
        elif span.kind == "name":  # untyped: a name of its shape seen on its pages in the corpus
            pool = [v for v in vocab.others.get(span.scale, []) if plural(v) == plural(span.text)]
        else:
            pool = name_values(span, q, vocab)
        pool = [v for v in pool if not on(v, q)]
        if not pool:
            counts[f"{attribute}:no_same_type_value"] += 1
            continue
        fresh = [v for v in pool if not (month_on(v, page) if span.kind == "month" else on(v, page))]
        if not fresh:
            counts[f"{attribute}:value_on_page"] += 1
            continue
        if span.kind not in ("month",):  # months: the nearest first; others: a seeded choice among the best fits
            head = fresh[:6] if span.kind in ("company", "place", "person", "product", "name") else fresh
            fresh = rng.sample(head, len(head))
        if span.kind == "month":
            out += [Rewrite(_at(q, [span], [v]), attribute) for v in fresh[:PER_ATTRIBUTE]]
            continue
        # "Block (formerly known as Square)": the aside belongs to the old name, not to the new one
        base = _ASIDE.sub("", q) if span.kind == "company" and _ASIDE.search(q) else q
        out += [Rewrite(_apply(base, span.text, _fit(v, span, q)), attribute) for v in fresh[:PER_ATTRIBUTE]]
    return out


def rewrite(query: str, page_text: str, vocab: Vocabulary, attributes: list[str], n: int, seed: str,
            user_attributes: Sequence[UserAttribute] = (), counts: Counter | None = None) -> list[Rewrite]:
    """Up to ``n`` rewrites of ``query``, each changing exactly one attribute, spread over the attributes.
    Spans it cannot change are counted into ``counts`` (``<attribute or name>:<reason>``)."""
    counts = counts if counts is not None else Counter()
    rng = _rng(seed, query)
    user = {a.name: a for a in user_attributes}
    unknown = [a for a in attributes if a not in ATTRIBUTES and a not in user]
    if unknown:
        raise ValueError(f"attributes {unknown}: expected names from {list(ATTRIBUTES) + list(user)}")
    spans = question_spans(query, vocab, counts)
    ranges = editable_ranges(query)
    by_attr: dict[str, list[Rewrite]] = {}
    for a in attributes:
        if a in user:
            r = swap_terms(query, page_text, a, [list(user[a].examples)], None, rng, counts, ranges)
        elif a in TERMS:
            r = swap_terms(query, page_text, a, TERMS[a], vocab, rng, counts, ranges)
        else:
            r = _swap_spans(query, page_text, a, [s for s in spans if s.kind in KINDS[a]], vocab, rng, counts)
            if a == "person":  # and the roles people have ("the defendant" -> "the plaintiff")
                r += swap_terms(query, page_text, a, ROLES, vocab, rng, counts, ranges)
            if a == "reference":  # and the kinds of parts counted or named ("How many figures" -> "How many tables")
                r += swap_terms(query, page_text, a, DOC_OBJECTS, vocab, rng, counts, ranges)
        if r:
            by_attr[a] = r
    out, seen = [], {normalize(query)}
    while len(out) < n and any(by_attr.values()):  # round robin: every attribute gets its turn
        for a in list(by_attr):
            if by_attr[a] and len(out) < n:
                cand = by_attr[a].pop(0)
                if normalize(cand.text) not in seen:
                    seen.add(normalize(cand.text))
                    out.append(cand)
    return out

