"""Typed spans for the ``rules`` engine: what kind of value a piece of a question is, and which values of each
kind the corpus holds.

Kinds: ``year`` (1950-2099, also "FY2019", "FY19"), ``quarter`` ("Q3", "H1"), ``month`` (a month name before a day
or a year: "Oct. 24, 2016"), ``reference`` (a part of the document by its number: "Table 2", "Section 3.4", "page
15"), numbers by unit (``percent``, ``money``, ``scaled`` as in "330 million", ``plain``), and names: ``company``
(organisations), ``person``, ``place``, ``product``. Names are capitalised runs ("Activision Blizzard", "Society
of Indian Law Firms"), typed by what the run itself or the corpus shows: an organisation word at its end or head
("3M Company", "University of ..."), a report it issues ("X | Annual Report 2021"), or the same name seen so in
the corpus ("Boeing" <- "The Boeing Company"); an honorific or a role next to it ("Mr. Hanson", "Jane Doe, Chief
Executive Officer"); a place name; a trademark sign or a model code ("GPT-4", "iOS 9"). A run nothing types stays
untyped, and the rules engine leaves it alone. Pure, no dependencies.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from docrerank.lexical.lexicon import (
    CONNECTORS,
    HONORIFICS,
    MONTHS,
    ORG_HEADS,
    ORG_SUFFIXES,
    PLACES,
    REFERENCE_KINDS,
    ROLE_WORDS,
    SENTENCE_START,
)

NUMBER_KINDS = ("percent", "money", "scaled", "plain")
CORPORATE = frozenset("inc incorporated corp corporation company co ltd limited llc llp lp plc ag sa se nv bv gmbh "
                      "pty holdings holding".split())  # suffixes a company is also called without ("Boeing")
REFERENCE_WORDS = frozenset("page pages section sections table tables figure figures fig chapter chapters appendix step "
                            "steps item items note notes part exhibit no no. number numbers # line lines row column "
                            "error errors code version top".split())
SMALL_COUNT = 12
# words that never make a name by themselves ("FORM 10-K", "Annual Report", "Table of Contents")
NOT_NAMES = REFERENCE_WORDS | frozenset("form annual report quarterly contents of the and index".split())

YEAR = re.compile(r"(?<![\w.$])(?:(FY|CY|F)\s?'?)?((?:19[5-9]\d|20\d\d))(?![\w%]|\.\d|,\d)|(?<![\w.$])(FY)'?(\d\d)\b",
                  re.I)
QUARTER = re.compile(r"\b([QH])([1-4])\b")
# a month name is a date only before a day or a year ("May" alone is a verb as often as a month)
MONTH = re.compile(r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)([a-z]*)(\.?)(?=,?\s+(?:\d{1,2}\b|(?:19|20)\d\d\b))")
REFERENCE = re.compile(r"(?<![\w.])((?i:table|figure|fig\.|section|chapter|appendix|page|exhibit|note|item|step))\s+"
                       r"(\d{1,3}(?:\.\d{1,2}){0,2}|[A-Z])(?!\w|\.\d|,\d)")
NUMBER = re.compile(
    r"(?<![\w.])(?P<cur>\$|USD\s?|US\$)?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?"
    r"(?:\s?(?P<pct>%|percent\b)|\s(?P<scale>thousand|million|billion|trillion|crore|lakh|bn|mn)\b)?"
    r"(?:\s(?P<curw>dollars|USD)\b)?(?![\w])", re.I)
_WORD = r"(?:[A-Z][A-Za-z&'’.\-]*[A-Za-z&]|[A-Z]|\d+[A-Z][A-Za-z]*)(?![\w-])"
RUN = re.compile(rf"(?<![\w&.'’-]){_WORD}(?:(?:\s+(?:of|and|&|for|de|the))*\s+{_WORD})*")
CODE = re.compile(r"(?<![\w-])([A-Za-z]*[A-Z][A-Za-z]*)(-| )?(\d+(?:\.\d+)?)([A-Za-z]?)(?![\w-])")
TRADEMARK = re.compile(r"^\s?(?:®|™|\(R\)|\(TM\))")
CORP_AFTER = re.compile(r"^,?\s+(?:Inc|Corp|Corporation|Ltd|LLC|plc|N\.V|S\.A|AG|SE)\b\.?")
ROLE_AFTER = re.compile(r"^,\s+(?:the\s+)?(\w+)", re.I)
# the issuer of a report: "Helmsworth Logistics | Annual Report 2021", "NIKE, Inc. Form 10-K"
ISSUER_AFTER = re.compile(r"^\s*[|:\u2013\u2014-]?\s*(?:\d{4}\s+)?(?:Annual Report|Form 10-[KQ]|10-[KQ]\b|Quarterly Report|"
                          r"Sustainability Report|Integrated Report)")


@dataclass(frozen=True)
class Span:
    """A typed piece of a question: ``kind`` is one of the kinds above, or None (untyped)."""

    start: int
    end: int
    text: str
    kind: str | None
    scale: str | None = None  # numbers: the unit word ("million"), years: the prefix ("FY"), references: their kind


def number_kind(m: re.Match) -> str:
    """The unit kind of a ``NUMBER`` match: percent, money, scaled or plain."""
    if m.group("pct"):
        return "percent"
    if m.group("cur") or m.group("curw"):
        return "money"
    return "scaled" if m.group("scale") else "plain"


def number_value(m: re.Match) -> float:
    """The numeric value of a ``NUMBER`` match (unit words ignored)."""
    return float(m.group("num").replace(",", "") + (m.group("dec") or ""))


def is_year_text(text: str) -> bool:
    """Whether ``text`` is a plain year 1950-2099."""
    return bool(re.fullmatch(r"19[5-9]\d|20\d\d", text))


def all_caps(text: str) -> bool:
    """Whether a name is written in capitals ("NIKE", "AMCOR"; not "3M", one letter)."""
    return sum(c.isalpha() for c in text) >= 2 and text.isupper()


def month_of(m: re.Match) -> str | None:
    """The month (full lower-case name) of a ``MONTH`` match, or None when its letters are not a month's."""
    head, rest = m.group(1).lower(), m.group(2).lower()
    full = next((x for x in MONTHS if x.startswith(head[:3])), None)
    return full if full and (not rest or full.startswith(head + rest)) else None


def reference_of(m: re.Match) -> tuple[str, str]:
    """(kind, number) of a ``REFERENCE`` match: ("figure", "5") for "Fig. 5"."""
    return REFERENCE_KINDS[m.group(1).lower()], m.group(2)


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip(" ,.;:'’")).lower()


def clean_run(text: str, start: int, run: str) -> tuple[int, str]:
    """(start, phrase): a capitalised run without a sentence-opening question word, a leading "The", trailing
    connectors and a trailing possessive."""
    words = [(m.start(), m.end(), m.group(0)) for m in re.finditer(r"\S+", run)]
    at_start = start == 0 or bool(re.search(r"(?:^|[.?!:;\"(])\s*$", text[:start]))
    while words and ((at_start and words[0][2].lower() in SENTENCE_START) or words[0][2].lower() in CONNECTORS):
        words = words[1:]
    while words and words[-1][2].lower() in CONNECTORS:
        words = words[:-1]
    if not words:
        return start, ""
    phrase = re.sub(r"(?:'s|’s|'|’)$", "", run[words[0][0]:words[-1][1]]).rstrip(".")
    return start + words[0][0], phrase


def _ends_a_name(piece: str, after: str = "") -> bool:
    """Whether a run's piece before "and" is a whole name ("Boeing Company and NIKE", "Vietnam and Indonesia",
    "Mr. Hanson and Ms. Joly")."""
    nxt = after.split()[0].lower().strip(".,") if after.split() else ""
    return piece.split()[-1].lower().strip(".,") in ORG_SUFFIXES or piece.strip().lower() in PLACES \
        or nxt in HONORIFICS


def runs(text: str) -> list[tuple[int, int, str]]:
    """Capitalised name runs of ``text`` as (start, end, phrase), cleaned by ``clean_run``; a run is split at
    "and" after a whole name (``_ends_a_name``)."""
    out = []
    for m in RUN.finditer(text):
        parts = re.split(r"(\s+(?:and|&)\s+)", m.group(0))
        pieces: list[list[Any]] = [[m.start(), parts[0]]]
        off = m.start() + len(parts[0])
        for sep, part in zip(parts[1::2], parts[2::2]):
            if _ends_a_name(pieces[-1][1], part):
                pieces.append([off + len(sep), part])
            else:
                pieces[-1][1] += sep + part
            off += len(sep) + len(part)
        for start, piece in pieces:
            s, phrase = clean_run(text, start, piece)
            if phrase:
                out.append((s, s + len(phrase), phrase))
    return out


def own_kind(phrase: str, before: str, after: str) -> str | None:
    """The kind a name shows by itself or its neighbours, without the corpus."""
    words = phrase.split()
    low = [w.lower().strip(".,") for w in words]
    if len(words) >= 2 and (low[-1] in ORG_SUFFIXES or (low[0] in ORG_HEADS and low[1] == "of")):
        return "company"
    if CORP_AFTER.match(after) or ISSUER_AFTER.match(after):
        return "company"
    prev = before.split()[-1].lower().strip(".,") if before.split() else ""
    if set(low) & ROLE_WORDS:  # "Executive Vice President" is a role, not a person's name
        return None
    if prev in HONORIFICS and 1 <= len(words) <= 3:
        return "person"
    role = ROLE_AFTER.match(after)
    if role and role.group(1).lower() in ROLE_WORDS and 2 <= len(words) <= 3 and low[-1] not in ORG_SUFFIXES:
        return "person"
    if re.fullmatch(r"[A-Z][a-z]+ [A-Z]\. [A-Z][a-z]+", phrase):
        return "person"
    if phrase.lower() in PLACES:
        return "place"
    if TRADEMARK.match(after):
        return "product"
    return None


@dataclass
class Vocabulary:
    """What the corpus offers the rules engine: its years, quarters, numbers by unit, typed names, and which
    terms of the metric vocabularies it uses. Built from the text layer of the pages being built."""

    years: Counter = field(default_factory=Counter)
    quarters: Counter = field(default_factory=Counter)
    months: Counter = field(default_factory=Counter)  # month (full lower-case name) -> pages that date by it
    references: dict = field(default_factory=dict)  # reference kind -> {number: count} ("table" -> {"2": 5})
    names: dict = field(default_factory=dict)  # kind -> {name: count}
    numbers: dict = field(default_factory=dict)  # number kind (+ scale) -> {text: count}
    codes: dict = field(default_factory=dict)  # model-code prefix -> {code: count}
    text_terms: set = field(default_factory=set)  # metric and role words the corpus contains (lower case)
    others: dict = field(default_factory=dict)  # an untyped proper name -> names seen on its pages, of its shape

    @classmethod
    def from_texts(cls, texts: list[str], max_per_kind: int = 5000) -> "Vocabulary":
        """Collect the vocabulary of page texts (line by line: names do not span table cells or title lines)."""
        from docrerank.lexical.lexicon import (
            BUSINESS_SEGMENTS,
            COLORS,
            DOC_OBJECTS,
            FINANCIAL_METRICS,
            ROLES,
            SUBJECT_METRICS,
        )

        v = cls()
        names: dict[str, Counter] = defaultdict(Counter)
        cap, low = Counter(), Counter()  # how often each word is written capitalised / in lower case
        numbers: dict[str, Counter] = defaultdict(Counter)
        codes: dict[str, Counter] = defaultdict(Counter)
        terms = [t.lower() for fam in FINANCIAL_METRICS + SUBJECT_METRICS + BUSINESS_SEGMENTS + ROLES + DOC_OBJECTS
                 + COLORS for t in fam]
        refs: dict[str, Counter] = defaultdict(Counter)
        incorporated: set[str] = set()  # names written with a corporate suffix: "Block, Inc." names Block
        untyped: list[set[str]] = []  # per page: the capitalised runs nothing types ("Latinos", "USB", "ChatGPT")
        for text in texts:
            text = (text or "").replace("\xa0", " ")  # names are written with plain spaces in questions
            v.years.update({m.group(2) for m in YEAR.finditer(text) if m.group(2)})
            v.quarters.update({m.group(0) for m in QUARTER.finditer(text)})
            v.months.update({mo for mo in map(month_of, MONTH.finditer(text)) if mo})
            for kind, num in {reference_of(m) for m in REFERENCE.finditer(text)}:
                refs[kind][num] += 1
            flat = " " + re.sub(r"\s+", " ", text.lower()) + " "
            v.text_terms.update(t for t in terms if f" {t} " in flat or f" {t}," in flat or f" {t}." in flat)
            for w in re.findall(r"(?<![\w.])[A-Za-z][a-z]+(?![\w])", text):
                (low if w[0].islower() else cap)[w.lower()] += 1
            page_untyped: set[str] = set()
            for line in text.splitlines():
                page_untyped.update(_untyped_names(line))
                for kind, name, sure in _line_names(line):
                    names[kind][name] += 1
                    if sure:
                        incorporated.add(name)
                for m in NUMBER.finditer(line):
                    if not is_year_text(m.group(0)):
                        numbers[number_key(m)][m.group("num") + (m.group("dec") or "")] += 1
                for m in CODE.finditer(line):
                    if not _not_a_code(m):
                        codes[m.group(1)][m.group(0)] += 1
            untyped.append(page_untyped)
        # a name needs a word the corpus writes capitalised (almost) only: "Gaming" or "Related Party" are not names
        proper = {w for w, n in cap.items() if low[w] <= 0.1 * n}

        def is_name(name: str) -> bool:
            words = [w.lower() for w in re.findall(r"[A-Za-z]+", name)]
            if " " not in name and (len(name) < 2 or "." in name):
                return False
            return (name in incorporated or any(w in proper or len(w) <= 4 and name.upper() == name for w in words)
                    or bool(re.search(r"\d|[a-z][A-Z]", name)))  # "3M", "PepsiCo"

        v.names = {k: dict(Counter({n: c for n, c in cs.items() if k == "place" or is_name(n)}).most_common(max_per_kind))
                   for k, cs in names.items()}
        v.numbers = {k: dict(c.most_common(max_per_kind)) for k, c in numbers.items()}
        v.codes = {k: dict(c.most_common(50)) for k, c in codes.items() if len(c) >= 2}
        v.references = {k: dict(c.most_common(max_per_kind)) for k, c in refs.items()}
        typed = {_norm(n) for ns in v.names.values() for n in ns}
        heads = {_norm(n).split()[0] for ns in v.names.values() for n in ns if _norm(n)}  # "Adobe" of "Adobe Systems"

        def untyped_name(n: str) -> bool:
            one = " " not in n
            return is_name(n) and _norm(n) not in typed and not (one and (_norm(n) in heads or n.endswith("ly")))

        v.others = _neighbours(untyped, untyped_name, max_per_kind)
        return v

    def to_dict(self) -> dict:
        """A JSON-able form (the build passes the vocabulary to its workers)."""
        return {"years": dict(self.years), "quarters": dict(self.quarters), "months": dict(self.months),
                "references": self.references, "names": self.names, "numbers": self.numbers, "codes": self.codes,
                "text_terms": sorted(self.text_terms), "others": self.others}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Vocabulary":
        """The inverse of ``to_dict`` (an empty vocabulary for None)."""
        d = d or {}
        return cls(Counter(d.get("years", {})), Counter(d.get("quarters", {})), Counter(d.get("months", {})),
                   dict(d.get("references", {})), dict(d.get("names", {})), dict(d.get("numbers", {})),
                   dict(d.get("codes", {})), set(d.get("text_terms", [])), dict(d.get("others", {})))

    def other_name(self, phrase: str) -> str | None:
        """The untyped name of ``others`` that ``phrase`` is (case and spacing ignored), or None."""
        index = self.__dict__.get("_other_index")
        if index is None or len(index) != len(self.others):
            index = {_norm(n): n for n in self.others}
            self.__dict__["_other_index"] = index
        return index.get(_norm(phrase))

    def kind_of(self, phrase: str) -> str | None:
        """The kind the corpus gives a name (case-insensitive; a person's surname counts as a person), or None."""
        key = _norm(phrase)
        found = Counter()
        for kind, names in self.names.items():
            for name, n in names.items():
                if _norm(name) == key:
                    found[kind] += n
        if not found and " " not in key:
            found.update({"person": n for name, n in self.names.get("person", {}).items()
                          if _norm(name).split()[-1] == key})
        return found.most_common(1)[0][0] if found else None


def number_key(m: re.Match) -> str:
    """Where a number's corpus values are filed: its unit kind, plus the scale word ("scaled:million")."""
    kind = number_kind(m)
    return f"{kind}:{m.group('scale').lower()}" if m.group("scale") else kind


def _not_a_code(m: re.Match) -> bool:
    prefix, low = m.group(1), m.group(1).lower()
    spaced_word = m.group(2) == " " and (low in ("of", "or", "and", "to", "in", "at", "by", "on", "article")
                                         or (len(low) >= 3 and any(x.startswith(low[:3]) for x in MONTHS)))
    return (prefix.upper() in ("FY", "CY", "Q", "H", "F", "USD", "US") or low in REFERENCE_WORDS or spaced_word
            or is_year_text(m.group(3)) or (m.group(2) == " " and not re.search(r"[a-z][A-Z]|^[A-Z]{2,}", prefix)))


def _line_names(line: str) -> list[tuple[str, str, bool]]:
    """(kind, name, incorporated) for the typed names of one line; companies also under their short name
    ("Boeing", "Amazon" for "Amazon.com"); ``incorporated``: the line writes the name with a corporate suffix."""
    out = []
    for s, e, phrase in runs(line):
        kind = own_kind(phrase, line[:s], line[e:])
        words = phrase.lower().split()
        if kind is None or (kind != "place" and phrase.lower() in PLACES) or set(words) <= NOT_NAMES:
            continue  # "North America, Inc." names a place; "FORM 10-K" names a form
        head = phrase.rsplit(" of ", 1)[0].lower().split() if " of " in phrase else []
        if kind == "company" and head and not set(head) & (ORG_HEADS | ORG_SUFFIXES):
            phrase = phrase.rsplit(" of ", 1)[1]  # "Certificate of Amazon.com, Inc." is about Amazon.com
        phrase = re.sub(r"^[Tt]he\s+", "", phrase)
        if kind == "person" and re.fullmatch(r"[A-Z][a-z]{4,}ly", phrase):
            continue  # "Additionally, Mr. ...": a sentence adverb before the name
        sure = kind == "company" and bool(CORP_AFTER.match(line[e:]))
        out.append((kind, phrase, sure))
        if kind == "company":
            words = phrase.split()
            while words and words[-1].lower().strip(".,") in CORPORATE:
                words = words[:-1]
            short = re.sub(r"\.com$", "", " ".join(words).rstrip(","))
            if short and short != phrase and words[0].lower() not in ORG_HEADS and " of " not in f" {short} " \
                    and short.lower() not in PLACES and words[-1].lower() not in CONNECTORS:
                out.append(("company", short, sure))
    return out


def name_shape(name: str) -> tuple:
    """What an untyped name looks like: an acronym ("USB", "EU"), one word ("Latinos", "ChatGPT"), or n words."""
    words = name.split()
    if len(words) == 1:
        return ("acronym",) if all_caps(name) else ("word",)
    return ("words", len(words))


def _untyped_names(line: str) -> set[str]:
    """Capitalised runs of a line that no rule types and that are not sentence openers, references or forms."""
    out = set()
    for s, e, phrase in runs(line):
        words = phrase.lower().split()
        if not phrase or len(words) > 4 or set(words) <= NOT_NAMES | CONNECTORS or own_kind(phrase, line[:s], line[e:]):
            continue
        if {w.strip(".,") for w in words} & (HONORIFICS | ORG_SUFFIXES | ROLE_WORDS):  # "Mr", "Inc", "Vice President"
            continue
        if len(words) == 1 and (words[0] in SENTENCE_START or len(phrase) < 2 or _calendar_word(words[0])):
            continue
        out.add(phrase)
        if " and " in phrase or " & " in phrase:  # "Latinos and Hispanics": each is a name too
            out.update(p for p in re.split(r"\s+(?:and|&)\s+", phrase) if p and p.lower() not in NOT_NAMES)
    return out


def _calendar_word(word: str) -> bool:
    """A month or weekday, or its abbreviation ("Aug", "Sept.", "Mon")."""
    w = word.rstrip(".")
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    return len(w) >= 3 and any(x.startswith(w) for x in MONTHS + days)


def _neighbours(pages: list[set[str]], keep, limit: int, per_page: int = 40, per_name: int = 12) -> dict:
    """For each name ``keep`` accepts, the names of its shape seen on the same pages, most pages shared first
    (a name's neighbours are of its document and its kind more often than any other name of the corpus)."""
    seen = Counter(n for names in pages for n in names)
    ok = {n for n in seen if keep(n)}
    pairs: dict[str, Counter] = defaultdict(Counter)
    for page_names in pages:
        names = sorted(n for n in page_names if n in ok)[:per_page]
        for a in names:
            for b in names:
                if a != b and name_shape(a) == name_shape(b) and not set(a.lower().split()) & set(b.lower().split()):
                    pairs[a][b] += 1
    top = sorted(pairs, key=lambda n: -seen[n])[:limit]
    return {n: [b for b, _ in pairs[n].most_common(per_name)] for n in top}
