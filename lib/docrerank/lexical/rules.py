"""The ``rules`` engine: model-free hard negatives by changing exactly one attribute of a positive query.

Attributes (the paper's finance set): year, company, numeric_value, financial_metric, subject_metric,
business_segment, plus any user-defined attribute (a name and example values to swap between).
Replacement values come from the corpus itself where possible (entities and years seen on other pages),
so negatives stay on-distribution; values visible on the query's own page are avoided, because a question
about them would likely be answerable (the verifiers would reject it anyway).

Honest limits: entity spans are found by capitalisation and typed by the words around them in the corpus,
so lower-case entities and unusual names are missed; metric and segment swaps use vocabularies; the
rewrite is lexical (a year swapped inside "fiscal 2021" stays grammatical, a company inside a possessive
keeps the possessive). It is a cheap generator and a baseline, not a replacement for an LLM rewriter.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from docrerank.lexical.text import normalize

FINANCE_ATTRIBUTES = ("year", "company", "numeric_value", "financial_metric", "subject_metric", "business_segment")

FINANCIAL_METRICS = [
    "total revenue", "revenue", "net sales", "sales", "net income", "operating income", "gross profit",
    "gross margin", "operating margin", "operating expenses", "research and development expense",
    "capital expenditure", "free cash flow", "total assets", "long-term debt", "EBITDA",
    "earnings per share", "income tax", "acquisitions", "cost of sales",
]
SUBJECT_METRICS = [
    "dividend per share", "dividends", "stock options", "share repurchases", "shares outstanding",
    "stock price", "employees", "people", "facilities", "headcount", "restricted stock units",
]
BUSINESS_SEGMENTS = [
    "cloud", "software", "hardware", "manufacturing", "retail", "services", "consumer", "enterprise",
    "automotive", "healthcare", "advertising", "gaming", "data center", "wholesale", "logistics",
]
FALLBACK_COMPANIES = ["Apple", "IBM", "Microsoft", "Siemens", "Nestle", "Toyota", "Unilever", "Samsung"]

_ENTITY = re.compile(r"\b(?:[A-Z][a-zA-Z&\-]+)(?:\s+(?:[A-Z][a-zA-Z&\-]+)){1,3}\b")
_YEAR = re.compile(r"\b(19[5-9]\d|20\d\d)\b")
_NUMBER = re.compile(r"(?<![\w.])(\$?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(%?)(?![\w])")
_SENTENCE_START = {"What", "Which", "How", "When", "Where", "Who", "Why", "Did", "Does", "Is", "Are", "The", "In", "For"}


@dataclass
class Vocabulary:
    """What the corpus offers for swaps: years, entities with their context words, plus vocabularies."""

    years: Counter = field(default_factory=Counter)
    entities: dict[str, set] = field(default_factory=dict)  # phrase -> set of neighbouring words
    financial_metrics: list[str] = field(default_factory=lambda: list(FINANCIAL_METRICS))
    subject_metrics: list[str] = field(default_factory=lambda: list(SUBJECT_METRICS))
    segments: list[str] = field(default_factory=lambda: list(BUSINESS_SEGMENTS))

    @classmethod
    def from_texts(cls, texts: list[str], min_docs: int = 1, max_entities: int = 5000) -> "Vocabulary":
        """Collect years and capitalised multi-word entities (with their context words) from page texts."""
        v = cls()
        ctx: dict[str, set] = defaultdict(set)
        freq: Counter = Counter()
        for text in texts:
            v.years.update(set(_YEAR.findall(text)))
            seen = set()
            # line by line: names do not span table cells or title lines
            for line in text.splitlines():
                v._collect(line, ctx, seen)
            freq.update(seen)
        # A phrase on most pages is boilerplate ("Annual Report" in a running header), not a swappable name.
        too_common = 0.6 * len(texts) if len(texts) >= 10 else float("inf")
        for phrase, n in freq.most_common(max_entities):
            if min_docs <= n <= too_common:
                v.entities[phrase] = ctx[phrase] - {""}
        return v

    @staticmethod
    def _collect(line: str, ctx: dict, seen: set) -> None:
        for m in _ENTITY.finditer(line):
            phrase = m.group(0)
            words = phrase.split()
            if words[0] in _SENTENCE_START:
                if len(words) < 3:
                    continue
                phrase = " ".join(words[1:])
            before = line[max(0, m.start() - 30):m.start()].split()[-1:]
            after = line[m.end():m.end() + 30].split()[:1]
            ctx[phrase].update(w.lower().strip(",.:;|") for w in before + after)
            seen.add(phrase)

    def similar_entities(self, phrase: str, min_similarity: float = 0.2) -> list[str]:
        """Other entities whose contexts are alike (a cheap stand-in for an entity type), most alike first;
        entities sharing less than ``min_similarity`` of their context words are not of the same kind."""
        mine = self.entities.get(phrase, set())
        scored = []
        for other, c in self.entities.items():
            if other == phrase or other in phrase or phrase in other:
                continue
            j = len(mine & c) / len(mine | c) if mine | c else 0.0
            if j >= min_similarity:
                scored.append((-j, other))
        return [o for _, o in sorted(scored)]


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


def _on_page(value: str, page_text: str) -> bool:
    return normalize(value) in normalize(page_text)


def _replace_span(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def swap_year(q: str, page: str, vocab: Vocabulary, rng: random.Random) -> list[Rewrite]:
    """Rewrites with a year of the query replaced by a nearby one (or a corpus year) the page does not show."""
    out = []
    for m in _YEAR.finditer(q):
        y = int(m.group(0))
        pool = {str(y + d) for d in (-3, -2, -1, 1, 2)} | {k for k in vocab.years if abs(int(k) - y) <= 6}
        pool = sorted(p for p in pool if p != m.group(0) and not _on_page(p, page))
        rng.shuffle(pool)
        out += [Rewrite(_replace_span(q, m.start(), m.end(), p), "year") for p in pool[:3]]
    return out


def swap_company(q: str, page: str, vocab: Vocabulary, rng: random.Random) -> list[Rewrite]:
    """Rewrites with a company of the query replaced by similar corpus entities (well-known companies pad a small
    corpus) that the page does not name."""
    spans = [(m.start(), m.end(), m.group(0)) for m in _ENTITY.finditer(q)]
    out = []
    for s, e, phrase in spans:
        words = phrase.split()
        if words[0] in _SENTENCE_START:
            if len(words) < 3:
                continue
            s += len(words[0]) + 1
            phrase = " ".join(words[1:])
        cands = vocab.similar_entities(phrase)[:8] if phrase in vocab.entities else []
        # corpus entities of the same kind first; well-known companies pad a small corpus
        cands = [c for c in cands + FALLBACK_COMPANIES if not _on_page(c, page)]
        picks = cands[:4]
        rng.shuffle(picks)
        out += [Rewrite(_replace_span(q, s, e, c), "company") for c in picks[:3]]
    return out


def _swap_vocab(q: str, page: str, terms: list[str], attribute: str, rng: random.Random) -> list[Rewrite]:
    low = q.lower()
    for term in sorted(terms, key=len, reverse=True):  # longest match first ("total revenue" before "revenue")
        i = low.find(term.lower())
        if i < 0 or not re.match(r"\W|$", low[i + len(term):i + len(term) + 1] or " "):
            continue
        pool = [t for t in terms if t.lower() not in low and t.lower() not in term.lower() and not _on_page(t, page)]
        rng.shuffle(pool)
        return [Rewrite(_replace_span(q, i, i + len(term), t), attribute) for t in pool[:3]]
    return []


def swap_number(q: str, page: str, vocab: Vocabulary, rng: random.Random) -> list[Rewrite]:
    """Rewrites with a number of the query scaled (x0.5 to x2) to a value the page does not show; years excluded."""
    out = []
    for m in _NUMBER.finditer(q):
        whole = m.group(2).replace(",", "")
        if _YEAR.fullmatch(m.group(2)) and not m.group(1) and not m.group(4):
            continue  # years are their own attribute
        value = float(whole + (m.group(3) or ""))
        decimals = len(m.group(3) or ".")[1:] if m.group(3) else 0
        for f in rng.sample([0.5, 0.75, 0.8, 1.25, 1.5, 2.0], 2):
            new = value * f
            s = f"{new:,.{decimals}f}" if "," in m.group(2) else f"{new:.{decimals}f}"
            new_text = f"{m.group(1)}{s}{m.group(4)}"
            if new_text != m.group(0) and not _on_page(new_text, page):
                out.append(Rewrite(_replace_span(q, m.start(), m.end(), new_text), "numeric_value"))
    return out


def swap_user_attribute(q: str, page: str, attr: UserAttribute, rng: random.Random) -> list[Rewrite]:
    """Rewrites with a user attribute's value swapped for its other example values."""
    return _swap_vocab(q, page, list(attr.examples), attr.name, rng)


def rewrite(query: str, page_text: str, vocab: Vocabulary, attributes: list[str], n: int, seed: str,
            user_attributes: list[UserAttribute] = ()) -> list[Rewrite]:
    """Up to ``n`` rewrites of ``query``, each changing exactly one attribute, spread over the attributes."""
    rng = _rng(seed, query)
    by_attr: dict[str, list[Rewrite]] = {}
    user = {a.name: a for a in user_attributes}
    for a in attributes:
        if a == "year":
            r = swap_year(query, page_text, vocab, rng)
        elif a == "company":
            r = swap_company(query, page_text, vocab, rng)
        elif a == "numeric_value":
            r = swap_number(query, page_text, vocab, rng)
        elif a == "financial_metric":
            r = _swap_vocab(query, page_text, vocab.financial_metrics, a, rng)
        elif a == "subject_metric":
            r = _swap_vocab(query, page_text, vocab.subject_metrics, a, rng)
        elif a == "business_segment":
            r = _swap_vocab(query, page_text, vocab.segments + [e for e in vocab.entities if len(e) < 30][:0], a, rng)
        elif a in user:
            r = swap_user_attribute(query, page_text, user[a], rng)
        else:
            raise ValueError(f"attribute {a!r}: expected one of {list(FINANCE_ATTRIBUTES) + list(user)}")
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
