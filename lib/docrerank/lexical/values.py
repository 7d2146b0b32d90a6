"""Values of the same type for a typed span, from the corpus (``lexical.spans.Vocabulary``): what the ``rules``
engine may put where a year, a month, a number, a reference or a name stands.

- years: corpus years within 3 of the original, nearest first, written as the original ("FY19" -> "FY18");
  years that go together ("FY2017 - FY2019", "between FY2023 and FY2022", "in 2015 compared to 2014") form a
  *period* and move together, by the same shift, so a three-year range stays a three-year range;
- quarters: another quarter (or half) the corpus names; months: a month within 3 that the corpus dates by,
  in the original's style ("Oct." -> "Nov.", "October" -> "September");
- references: the same kind of part with a nearby number that the corpus has ("Table 2" -> "Table 3",
  "Section 3.3" -> "Section 3.2"; pages: any nearby page), chained references ("page 15 and page 16") moving
  together like a period;
- numbers: the same unit and scale, within x0.25..x4;
- names: the same kind, named the same way (a one-word name for a one-word name, "X University" for
  "Y University", a research center for a research center), the most frequent first.
"""

from __future__ import annotations

import re

from docrerank.lexical.lexicon import MONTHS, ORG_HEADS, ORG_SUFFIXES, PLACES, TAKES_THE
from docrerank.lexical.spans import CODE, CORPORATE, NUMBER, REFERENCE, YEAR, Span, Vocabulary, all_caps, number_value
from docrerank.lexical.text import normalize

SHIFTS = (-1, 1, -2, 2, -3, 3)  # how far a year, month or reference moves, nearest first (earlier on a tie)
# what may stand between two years (or references) of one period: "FY2017 - FY2019", "2012 to 2016", "FY2023,
# FY2022 and FY2021", "2015 compared to 2014", "between FY2023 and the FY2022 period", "page 15 and page 16"
CHAIN = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+)?|-|\u2013|\u2014|/|to|and|or|&|vs\.?|versus|through|"
                   r"compared?\s+(?:to|with))?\s*(?:the\s+)?")


def on(value: str, text: str) -> bool:
    """Whether ``value`` occurs in ``text`` as a whole word or phrase (case and spacing ignored)."""
    return re.search(rf"(?<![\w]){re.escape(normalize(value))}(?![\w])", normalize(text)) is not None


def form(phrase: str) -> str:
    """How a company is named: ``head`` ("Society of ..."), ``suffix`` ("Boeing Company"), ``short`` ("Boeing")."""
    w = [x.lower().strip(".,") for x in phrase.split()]
    if len(w) >= 2 and w[0] in ORG_HEADS and w[1] == "of":
        return "head"
    return "suffix" if len(w) >= 2 and w[-1] in ORG_SUFFIXES else "short"


def takes_the(phrase: str) -> bool:
    """Whether a name keeps "the" before it in a sentence ("the Boeing Company", "the University of ...")."""
    w = [x.lower().strip(".,") for x in phrase.split()]
    return form(phrase) == "head" or (len(w) >= 2 and w[-1] in TAKES_THE)


def org_word(phrase: str) -> str:
    """The organisation word a company is named with: its head ("society"), its corporate suffix ("corporate"),
    or its institutional suffix with the word before it when that is one too ("research center"); "" for a
    short name."""
    w = [x.lower().strip(".,") for x in phrase.split()]
    f = form(phrase)
    if f == "head":
        return w[0]
    if f == "suffix":
        return "corporate" if w[-1] in CORPORATE else w[-1]
    return ""


def name_values(span: Span, q: str, vocab: Vocabulary) -> list[str]:
    """Corpus names of the span's kind that can stand where it stands, the best fits first: same organisation
    word, then a name with as many words, then the most frequent."""
    if span.scale == "code":
        mine = CODE.fullmatch(span.text)
        return [c for c in vocab.codes.get(mine.group(1), {}) if c != span.text
                and (CODE.fullmatch(c).group(2) or "") == (mine.group(2) or "")
                and len(CODE.fullmatch(c).group(3).split(".")[0]) == len(mine.group(3).split(".")[0])]
    n = len(span.text.split())
    mine_org, mine_words = org_word(span.text), span.text.lower().split()
    # a name sharing a word with the span is the same name or its kin ("Activision Publishing"), except the
    # word that says what kind of organisation it is ("Research" in "Pew Research Center")
    kind_word = {mine_words[-2]} if n >= 3 and mine_words[-1] in ORG_SUFFIXES else set()
    words = set(mine_words) - ORG_SUFFIXES - ORG_HEADS - {"of", "and", "&", "the"} - kind_word
    place = PLACES.get(span.text.lower())
    out, spelled = [], {}
    for name, count in vocab.names.get(span.kind, {}).items():  # one spelling per name: in the span's case style
        best = spelled.get(name.lower())
        if best is None or (all_caps(best[0]) != all_caps(span.text) and all_caps(name) == all_caps(span.text)):
            spelled[name.lower()] = (name, count + (best[1] if best else 0))
        elif best:
            spelled[name.lower()] = (best[0], best[1] + count)
    for name, count in spelled.values():
        k = len(name.split())
        if words & set(name.lower().split()) or (n == 1) != (k == 1) or abs(k - n) > 1 or on(name, q):
            continue
        if span.kind == "company" and org_word(name) != mine_org:
            continue
        if span.kind == "place" and PLACES.get(name.lower()) != place:
            continue
        if span.kind == "person" and all_caps(name) != all_caps(span.text):
            continue
        # "Pew Research Center" is closer to "X Research Center" than to "Kennedy Space Center"
        shared_head = n >= 3 and name.lower().split()[-2:] == mine_words[-2:]
        out.append((not shared_head, k != n, -count, name))
    return [name for *_, name in sorted(out)[:20]]


def number_values(span: Span, vocab: Vocabulary) -> list[str]:
    """Corpus numbers of the span's unit and scale within x0.25..x4 of it, written as it is."""
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


def quarter_values(span: Span, vocab: Vocabulary) -> list[str]:
    """Other quarters (or halves) the corpus names."""
    return sorted(x for x in vocab.quarters if x[0] == span.text[0] and x != span.text)


def month_values(span: Span, vocab: Vocabulary) -> list[str]:
    """Months within 3 of the span's that the corpus dates by, nearest first, in the span's style."""
    i = MONTHS.index(span.scale)
    return [_month_text(MONTHS[(i + d) % 12], span) for d in SHIFTS if vocab.months.get(MONTHS[(i + d) % 12])]


def month_on(month_text: str, text: str) -> bool:
    """Whether ``text`` names the month of ``month_text`` in any style ("Sep." is on a page that says
    "September 30")."""
    full = next(m for m in MONTHS if m.startswith(month_text.rstrip(".").lower()[:3]))
    return re.search(rf"(?<![\w]){full[:3]}(?:{full[3:]}|t\.|\.)?(?![\w])", text, re.I) is not None


def _month_text(month: str, span: Span) -> str:
    """``month`` written as the span's month is: full or abbreviated (with its dot), in its case."""
    letters = span.text.rstrip(".")
    text = month if letters.lower() == span.scale else month[:3]
    text = text.upper() if letters.isupper() and len(letters) > 1 else text.capitalize()
    return text + ("." if span.text.endswith(".") and text != month else "")


def _shift_year(text: str, d: int) -> tuple[str, str]:
    """(new text, new four-digit year) of a year span moved by ``d`` years, in its own style ("FY19" -> "FY20")."""
    m = YEAR.fullmatch(text)
    year = int(m.group(2) or "20" + m.group(4)) + d
    head = text[: m.start(2) if m.group(2) else m.start(4)]
    return head + (str(year) if m.group(2) else f"{year % 100:02d}"), str(year)


def _shift_reference(text: str, d: int) -> tuple[str, str] | None:
    """(new text, new number) of a reference moved by ``d`` (its last number: "Section 3.4" -> "Section 3.5")."""
    m = REFERENCE.fullmatch(text)
    num = m.group(2)
    if not num[-1].isdigit():
        return None  # "Appendix A": lettered parts are not numbered
    head, _, last = num.rpartition(".")
    new = int(last) + d
    if new < 1:
        return None
    n = f"{head}.{new}" if head else str(new)
    return text[: m.start(2)] + n + text[m.end(2):], n


def shifted(group: list[Span], vocab: Vocabulary) -> list[tuple[int, list[str], list[str]]]:
    """Ways to move a period (years) or a chain of references by one shift: (shift, new texts, new values)
    for each shift in ``SHIFTS`` whose every new value the corpus has (pages: any page number from 1)."""
    out = []
    for d in SHIFTS:
        texts, values = [], []
        for sp in group:
            moved = _shift_year(sp.text, d) if sp.kind == "year" else _shift_reference(sp.text, d)
            if moved is None:
                break
            known = (vocab.years.get(moved[1]) if sp.kind == "year" else
                     sp.scale == "page" or vocab.references.get(sp.scale, {}).get(moved[1]))
            if not known:
                break
            texts.append(moved[0])
            values.append(moved[1] if sp.kind == "year" else f"{sp.scale} {moved[1]}")
        else:
            out.append((d, texts, values))
    return out
