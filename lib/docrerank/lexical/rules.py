"""The ``rules`` engine: model-free hard negatives by changing exactly one typed attribute of a positive query.

Attributes: ``year`` (years, fiscal years, quarters), ``numeric_value`` (percentages, money, scaled and plain
numbers), ``company`` (organisations), ``place``, ``person``, ``product`` (named products, model codes), and the
metric vocabularies ``financial_metric``, ``subject_metric``, ``business_segment``; plus user attributes (a
name and values to swap between). A span is changed only when its kind is known (``lexical.spans``), and only
for a value of the same kind that the corpus holds (the build's vocabulary of its own pages): a nearby year,
a number of the same unit and magnitude, a company named the same way (a one-word name for a one-word name,
"X Company" for "Y Company"). Values the page shows are avoided: a question about them would likely be
answerable. Every occurrence of the value in the query changes, nothing else does; case (ALL CAPS),
possessives, "the" and "a/an" follow the new value; a metric is swapped only for one of the same grammatical
number. Spans in answer instructions ("Round your answer to two decimal places", "... is defined as: ...")
are never changed. What it does not change it counts, by reason: ``untyped_span``, ``reference`` (page,
table, section numbers), ``small_count``, ``no_same_type_value``, ``value_on_page``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

from docrerank.lexical.lexicon import (BUSINESS_SEGMENTS, FINANCIAL_METRICS, ORG_HEADS, ORG_SUFFIXES, PLACES,
                                       SEGMENT_CUES, SENTENCE_START, SUBJECT_METRICS, TAKES_THE)
from docrerank.lexical.spans import (CODE, CORPORATE, NUMBER, NUMBER_KINDS, QUARTER, REFERENCE_WORDS, SMALL_COUNT, YEAR, Span,
                                     Vocabulary, _not_a_code, is_year_text, number_key, number_kind, number_value,
                                     own_kind, runs)
from docrerank.lexical.text import STOPWORDS, normalize

FINANCE_ATTRIBUTES = ("year", "company", "numeric_value", "financial_metric", "subject_metric", "business_segment")
ATTRIBUTES = FINANCE_ATTRIBUTES + ("place", "person", "product")
KINDS = {"year": ("year", "quarter"), "numeric_value": NUMBER_KINDS, "company": ("company",), "place": ("place",),
         "person": ("person",), "product": ("product",)}
TERMS = {"financial_metric": FINANCIAL_METRICS, "subject_metric": SUBJECT_METRICS, "business_segment": BUSINESS_SEGMENTS}
PER_ATTRIBUTE = 3  # rewrites per attribute (different values), before the round robin
_INSTRUCTION = re.compile(r"(?:answer|round|write|return|give|directly|enumerate|calculate|base|approach|use|using|"
                          r"assume|please|express|provide|list the|here'?s|you are)\b", re.I)
_UNIT_WORDS = frozenset("usd eur gbp us fy q".split())
_MONTH = re.compile(r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+$")

__all__ = ["ATTRIBUTES", "FINANCE_ATTRIBUTES", "Rewrite", "UserAttribute", "Vocabulary", "question_spans", "rewrite"]


@dataclass(frozen=True)
class UserAttribute:
    """A user-defined attribute: values that can replace each other (e.g. product names)."""

    name: str
    description: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Rewrite:
    """One rewritten query and the attribute it changed."""

    text: str
    attribute: str


def _rng(*keys) -> random.Random:
    return random.Random(int(hashlib.sha256("|".join(map(str, keys)).encode()).hexdigest()[:16], 16))


def _on(value: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(normalize(value))}(?![\w])", normalize(text)) is not None


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
    taken: list[tuple[int, int]] = []

    def free(s, e):
        return any(a <= s and e <= b for a, b in ranges) and not any(s < b and a < e for a, b in taken)

    def add(span):
        if free(span.start, span.end):
            spans.append(span)
            taken.append((span.start, span.end))

    for m in YEAR.finditer(q):
        prefix = m.group(1) or m.group(3) or ""
        add(Span(m.start(), m.end(), m.group(0), "year", prefix))
    for m in QUARTER.finditer(q):
        add(Span(m.start(), m.end(), m.group(0), "quarter"))
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
        elif _MONTH.search(q[:m.start()]):
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
        if kind is None:
            counts["name:untyped_span"] += 1
        add(Span(s, e, phrase, kind))
    return [sp for sp in spans if sp.kind is not None]


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


def _form(phrase: str) -> str:
    """How a company is named: ``head`` ("Society of ..."), ``suffix`` ("Boeing Company"), ``short`` ("Boeing")."""
    w = [x.lower().strip(".,") for x in phrase.split()]
    if len(w) >= 2 and w[0] in ORG_HEADS and w[1] == "of":
        return "head"
    return "suffix" if len(w) >= 2 and w[-1] in ORG_SUFFIXES else "short"


def _takes_the(phrase: str) -> bool:
    w = [x.lower().strip(".,") for x in phrase.split()]
    return _form(phrase) == "head" or (len(w) >= 2 and w[-1] in TAKES_THE)


def _org_word(phrase: str) -> str:
    """The organisation word a company is named with: its head ("society"), its corporate suffix ("corporate")
    or its institutional suffix ("university"); "" for a short name."""
    w = [x.lower().strip(".,") for x in phrase.split()]
    form = _form(phrase)
    if form == "head":
        return w[0]
    if form == "suffix":
        return "corporate" if w[-1] in CORPORATE else w[-1]
    return ""


def _name_values(span: Span, q: str, vocab: Vocabulary) -> list[str]:
    """Corpus names of the span's kind that can stand where it stands, the most frequent first."""
    if span.scale == "code":
        mine = CODE.fullmatch(span.text)
        return [c for c in vocab.codes.get(mine.group(1), {}) if c != span.text
                and (CODE.fullmatch(c).group(2) or "") == (mine.group(2) or "")]
    words = set(span.text.lower().split()) - ORG_SUFFIXES - ORG_HEADS - {"of", "and", "&", "the"}
    n = len(span.text.split())
    place = PLACES.get(span.text.lower())
    out = []
    for name, count in vocab.names.get(span.kind, {}).items():
        k = len(name.split())
        if words & set(name.lower().split()) or (n == 1) != (k == 1) or abs(k - n) > 1 or _on(name, q):
            continue
        if span.kind == "company" and _org_word(name) != _org_word(span.text):
            continue
        if span.kind == "place" and PLACES.get(name.lower()) != place:
            continue
        out.append((-count, name))
    return [name for _, name in sorted(out)[:20]]


def _number_values(span: Span, vocab: Vocabulary) -> list[str]:
    m = NUMBER.fullmatch(span.text)
    value, dec = number_value(m), len(m.group("dec") or ".") - 1
    out = []
    for text in vocab.numbers.get(span.scale, {}):
        v = float(text.replace(",", ""))
        if value and 0.25 <= v / value <= 4:
            new = f"{v:,.{dec}f}" if "," in m.group("num") else f"{v:.{dec}f}"
            if new != m.group("num") + (m.group("dec") or ""):
                out.append(span.text[:m.start("num") - m.start()] + new + span.text[m.end("dec") if m.group("dec")
                                                                                   else m.end("num"):])
    return sorted(set(out))


def _year_values(span: Span, vocab: Vocabulary) -> list[str]:
    if span.kind == "quarter":
        return sorted(x for x in vocab.quarters if x[0] == span.text[0] and x != span.text)
    m = YEAR.fullmatch(span.text)
    year = int(m.group(2) or "20" + m.group(4))
    near = sorted((abs(int(y) - year), y) for y in vocab.years if 0 < abs(int(y) - year) <= 3)
    head = span.text[: m.start(2) if m.group(2) else m.start(4)]
    return [head + (y if m.group(2) else y[2:]) for _, y in near]


def _fit(value: str, span: Span, q: str) -> str:
    """``value`` in the case style of the span and the query."""
    if q.upper() == q:
        return value.upper()
    if span.text[:1].isupper() and value[:1].islower() and span.kind is None:
        return value[:1].upper() + value[1:]
    if value.isupper() and len(value) > 4 and not span.text.isupper():
        return value.title()
    return value


def _apply(q: str, old: str, new: str, whole_word: bool = True) -> str:
    """``q`` with every occurrence of ``old`` replaced by ``new``, "the" and "a/an" kept in agreement."""
    pat = re.compile(rf"(?<![\w]){re.escape(old)}(?![\w])" if whole_word else re.escape(old))
    out, last = [], 0
    for m in pat.finditer(q):
        head = q[last:m.start()]
        if re.search(r"\b[Tt]he $", head) and not _takes_the(new) and _takes_the(old):
            head = head[:-4]
        art = re.search(r"\b([Aa]n?) $", head)
        if art and new[:1].isalpha():
            a = "an" if new[0].lower() in "aeiou" else "a"
            head = head[:art.start(1)] + (a.capitalize() if art.group(1)[0] == "A" else a) + " "
        out += [head, new]
        last = m.end()
    return "".join(out + [q[last:]])


def _plural(term: str) -> bool:
    last = term.split()[-1].lower()
    return last.endswith("s") and not last.endswith(("ss", "is", "us"))


def _term_slot(q: str, start: int, end: int, attribute: str) -> bool:
    """Whether a vocabulary term found at ``q[start:end]`` stands alone: not inside a name ("Traveler's
    Insurance Company"), not part of a longer noun ("fixed asset turnover ratio", "quick ratio cycle"), and for
    a business segment, next to a word that makes it one ("the cloud segment")."""
    before = re.findall(r"[\w'’&-]+", q[:start])[-1:]
    after = re.findall(r"[\w'’&-]+", q[end:])[:1]
    if q[start].isupper() and q.upper() != q and (before and before[0][0].isupper() or after and after[0][0].isupper()):
        return False
    if attribute == "business_segment":
        return bool(after and after[0].lower() in SEGMENT_CUES or before and before[0].lower() in SEGMENT_CUES)
    left_ok = not before or before[0].lower() in STOPWORDS or before[0].lower().endswith(("'s", "’s")) \
        or bool(YEAR.fullmatch(before[0])) or before[0].lower() in ("fiscal", "annual", "quarterly", "its", "their")
    right_ok = not after or after[0].lower() in STOPWORDS or after[0][0].isdigit() or not after[0][0].isalpha()
    return left_ok and right_ok


def swap_terms(q: str, page: str, attribute: str, families, vocab: Vocabulary | None, rng: random.Random,
               counts: Counter) -> list[Rewrite]:
    """Rewrites with the query's (longest) term of a vocabulary replaced by another of its family that the
    corpus uses (any value for a user attribute: ``vocab`` None), of the same grammatical number, that the page
    does not show."""
    low = q.lower()
    ranges = editable_ranges(q)
    terms = sorted(((t, fam) for fam in families for t in fam), key=lambda x: -len(x[0]))
    for term, family in terms:  # longest match first ("total revenue" before "revenue")
        m = re.search(rf"(?<![\w-]){re.escape(term.lower())}(?![\w-])", low)
        if not m or not any(a <= m.start() and m.end() <= b for a, b in ranges):
            continue
        if vocab is not None and not _term_slot(q, m.start(), m.end(), attribute):
            continue
        pool = [t for t in family if t.lower() not in low and term.lower() not in t.lower()
                and t.lower() not in term.lower() and (vocab is None or t.lower() in vocab.text_terms)
                and (vocab is None or _plural(t) == _plural(term))]
        if not pool:
            counts[f"{attribute}:no_same_type_value"] += 1
            return []
        fresh = [t for t in pool if not _on(t, page)]
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


def _swap_spans(q: str, page: str, attribute: str, spans: list[Span], vocab: Vocabulary, rng: random.Random,
                counts: Counter) -> list[Rewrite]:
    out = []
    for span in spans:
        if span.kind == "year" or span.kind == "quarter":
            pool = _year_values(span, vocab)
        elif span.kind in NUMBER_KINDS:
            pool = _number_values(span, vocab)
        else:
            pool = _name_values(span, q, vocab)
        pool = [v for v in pool if not _on(v, q)]
        if not pool:
            counts[f"{attribute}:no_same_type_value"] += 1
            continue
        core = (lambda v: YEAR.search(v).group(2) or YEAR.search(v).group(4)) if span.kind == "year" else (lambda v: v)
        fresh = [v for v in pool if not _on(core(v), page)]
        if not fresh:
            counts[f"{attribute}:value_on_page"] += 1
            continue
        if span.kind != "year":  # years: the nearest first; others: a seeded choice
            rng.shuffle(fresh)
        out += [Rewrite(_apply(q, span.text, _fit(v, span, q)), attribute) for v in fresh[:PER_ATTRIBUTE]]
    return out


def rewrite(query: str, page_text: str, vocab: Vocabulary, attributes: list[str], n: int, seed: str,
            user_attributes: list[UserAttribute] = (), counts: Counter | None = None) -> list[Rewrite]:
    """Up to ``n`` rewrites of ``query``, each changing exactly one attribute, spread over the attributes.
    Spans it cannot change are counted into ``counts`` (``<attribute or name>:<reason>``)."""
    counts = counts if counts is not None else Counter()
    rng = _rng(seed, query)
    user = {a.name: a for a in user_attributes}
    unknown = [a for a in attributes if a not in ATTRIBUTES and a not in user]
    if unknown:
        raise ValueError(f"attributes {unknown}: expected names from {list(ATTRIBUTES) + list(user)}")
    spans = question_spans(query, vocab, counts)
    by_attr: dict[str, list[Rewrite]] = {}
    for a in attributes:
        if a in user:
            r = swap_terms(query, page_text, a, [list(user[a].examples)], None, rng, counts)
        elif a in TERMS:
            r = swap_terms(query, page_text, a, TERMS[a], vocab, rng, counts)
        else:
            r = _swap_spans(query, page_text, a, [s for s in spans if s.kind in KINDS[a]], vocab, rng, counts)
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


def is_year(text: str) -> bool:
    """Whether ``text`` is a plain year (1950-2099)."""
    return is_year_text(text)
