"""The ``text`` judge: is a query answerable from a page, judged from the page's text layer alone.

Two "prompts", like the VLM verifier's two phrasings, each an estimate that the page answers the query. The query
is reduced to its *terms*: content words, less the words every question about a document uses ("answer", "round",
"decimal", "page", "table", "report", ...: ``QUESTION_WORDS``); fiscal periods are read as their year ("FY2019",
"FY19" -> 2019), and a reference to a part of the document as one term ("Table 2", "Fig. 2" -> "figure 2"; a
page's number is on the page when a line of its text is that number). Its *anchors* are the terms that pin it to
specific facts: years, numbers (not small counts like "two" or "3"), and capitalised words that do not start a
sentence. A page can only answer a question about Adobe in 2015 if "Adobe" and "2015" occur on it, so each anchor
missing from the page multiplies the estimate by ``MISSING_ANCHOR``.
  A  novelty:  share of the query's *new* terms found on the page (for a negative: terms not in its
               positive; for a positive: all its terms), to the power ``NOVELTY_POWER``. A negative that
               changed 2021 to 2020 on a page whose table has a 2020 column scores 1.0: the page may answer it.
  B  coverage: share of all the query's terms found on the page, to the power ``COVERAGE_POWER``.
A positive is kept when both are high, a negative when both are low. ``UNKNOWN`` (0.5, the shipped
threshold) when there is nothing to measure (no text layer): such a page is never taken for a clear "no".
Words match on a light stem (plural and -ing/-ed endings dropped, then the first ``STEM`` letters).

Measured on real documents (``bench/judge_qa_dev.py``: 124 human questions, each against its answer pages
and the other pages of its document) the judge separates answer pages from the rest with a ROC AUC of
0.74. Its thresholds are set per use from that measurement and from mining the dev set (``THRESHOLDS``; the
README has both error rates at each): positives and the build's negatives at 0.5, the mining filter at 0.4,
where no labelled answer page was left among the mined negatives (3 of 521 at 0.5) for 8 fewer complete
queries of 221. Limits: lexical only (no synonyms, no
reading of charts or scans), so it is a cheap pre-filter in front of a VLM judge, and the judge of
model-free runs.
"""

from __future__ import annotations

import re

from docrerank.lexical.spans import REFERENCE, reference_of
from docrerank.lexical.text import STOPWORDS

UNKNOWN = 0.5
MISSING_ANCHOR = 0.5
NOVELTY_POWER = 0.5
COVERAGE_POWER = 1.5
STEM = 6  # words this long or longer match on their first STEM letters ("headquartered" ~ "headquarters")

# Words of the question's form, not of its facts: answer formats, references to the document itself and
# its parts, and the preambles of analyst-style questions. A page rarely repeats them, and that says nothing.
QUESTION_WORDS = frozenset(
    """answer answers answering round rounded rounding decimal decimals place places format formatted integer
    float write written return give list listed directly yes no according following shown show shows mentioned
    provided based base primarily mainly only information question questions document documents report reports
    page pages slide slides paper papers guidebook manual section sections appendix table tables figure figures
    chart charts image picture e.g eg example examples usd units unit terms term percents calculate extract
    assume assuming analyst analysts standpoint resource resources approach relying details detail judgments
    judgement judgments best abilities ability state explain useful metric like something would ask asked here
    please also respectively whether both either other another same such one two three four five six seven
    eight nine ten first second third last year years total""".split()
) | STOPWORDS

_TERM = re.compile(r"\b(?:FY|F|CY)\s?'?(\d{4}|\d{2})\b|\$?\d[\d,]*(?:\.\d+)?%?|[A-Za-z][A-Za-z&'\-]*", re.I)
_SENTENCE_END = re.compile(r"[.?!:;]\s*$")
_SMALL_COUNT = 12  # integers up to this are counts ("3 year average", "top 10"), not anchors
# The judge's threshold for each use (``engines.verify.judge_threshold``): ``positive``: both estimates >= it
# keeps a positive (a wrong "yes" is the costly error: 6% of other pages pass at 0.5); ``negative``: both < it
# keeps a rewritten negative (estimate A looks only at the changed value, so an answerable rewrite scores near
# 1 at any threshold; lower thresholds mostly drop good hard negatives: 106 -> 95 dev positives with k at 0.3);
# ``mine``: either >= it removes a mined page (a false negative kept is the costly error: at 0.4 none of the
# dev set's labelled answer pages stayed among the mined negatives, at 0.5 3 of 521 did; 0.3 costs 36 queries).
THRESHOLDS = {"positive": 0.5, "negative": 0.5, "mine": 0.4}


def _year_of(two_or_four: str) -> str:
    return two_or_four if len(two_or_four) == 4 else "20" + two_or_four


def _stem(word: str) -> str:
    """A light stem: plural and common verb endings dropped, then at most ``STEM`` letters."""
    w = word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not (suffix == "s" and w.endswith("ss")):
            w = w[: len(w) - len(suffix)] + repl
            break
    return w[:STEM]


def _norm(raw: str) -> str:
    t = raw.lower().strip("'-")
    if t.endswith("'s"):
        t = t[:-2]
    if t[:1].isdigit() or t[:1] == "$":
        t = t.lstrip("$").rstrip("%").replace(",", "")
        t = t.rstrip("0").rstrip(".") if "." in t else t
    return t


def query_terms(query: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """(terms, anchors) of a query: its content words (``QUESTION_WORDS`` left out; "FY2019" read as
    "2019"), and the groups of them that pin it to facts: each year, each number beyond small counts, and
    each run of capitalised words that do not start a sentence ("Activision Blizzard", "Interest Coverage
    Ratio": one anchor, found when any of its words is)."""
    terms, anchors, run, prev_end = [], [], [], -1
    refs = [(r.start(), r.end(), " ".join(reference_of(r))) for r in REFERENCE.finditer(query)]
    terms += [ref for *_, ref in refs]  # a term, not an anchor: answer pages often cite their part otherwise
    for m in _TERM.finditer(query):
        if any(s <= m.start() < e for s, e, _ in refs):
            continue  # read as one term above
        raw = m.group(0)
        t = _year_of(m.group(1)) if m.group(1) else _norm(raw)
        gap = query[prev_end:m.start()] if prev_end >= 0 else ""
        if run and (gap.strip(" '\"") or not (raw[0].isupper() and not m.group(1))):
            anchors.append(tuple(run))
            run = []
        prev_end = m.end()
        if m.group(1):  # a fiscal period: its year is the fact
            terms.append(t)
            anchors.append((t,))
            continue
        if not t or t in QUESTION_WORDS or (len(t) < 2 and not t.isdigit()):
            continue
        terms.append(t)
        sentence_start = m.start() == 0 or bool(_SENTENCE_END.search(query[: m.start()]))
        if t[0].isdigit():
            if "." in t or len(t) >= 4 or int(t) > _SMALL_COUNT:
                anchors.append((t,))
        elif raw[0].isupper() and not sentence_start:
            run.append(t)
    if run:
        anchors.append(tuple(run))
    return terms, list(dict.fromkeys(anchors))


def page_vocabulary(page_text: str) -> set[str]:
    """Normalised words and numbers of a page (with joined number forms: "5,230.3" and "5230.3"), and
    their stems."""
    vocab = {" ".join(reference_of(m)) for m in REFERENCE.finditer(page_text)}
    vocab.update(f"page {n}" for n in re.findall(r"(?m)^\s*(\d{1,4})\s*$", page_text))  # a printed page number
    for text in (page_text, re.sub(r"(?<=\d),(?=\d)", "", page_text)):
        for m in _TERM.finditer(text):
            t = _year_of(m.group(1)) if m.group(1) else _norm(m.group(0))
            if t:
                vocab.add(t)
                if t[0].isalpha():
                    vocab.add("~" + _stem(t))
    return vocab


def _found(t: str, vocab: set[str]) -> bool:
    return t in vocab or (t[0].isalpha() and "~" + _stem(t) in vocab)


def _share(needles: list[str], vocab: set[str]) -> float:
    return sum(_found(t, vocab) for t in needles) / len(needles) if needles else 1.0


def judge_text(query: str, page_text: str, parent: str | None = None) -> tuple[float, float]:
    """(p_A, p_B): two estimates that ``page_text`` answers ``query`` (see module doc)."""
    if not page_text or not page_text.strip():
        return UNKNOWN, UNKNOWN
    vocab = page_vocabulary(page_text)
    words, anchors = query_terms(query)
    new = words if parent is None else [w for w in words if w not in set(query_terms(parent)[0])]
    damp = MISSING_ANCHOR ** sum(not any(_found(t, vocab) for t in a) for a in anchors)
    p_a = (_share(new, vocab) ** NOVELTY_POWER if new else UNKNOWN) * damp
    p_b = _share(words, vocab) ** COVERAGE_POWER * damp
    return p_a, p_b
