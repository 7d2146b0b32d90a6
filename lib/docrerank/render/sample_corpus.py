"""A sample corpus the project makes itself: annual-report-like PDFs of fictional companies.

Each report (one company, one fiscal year) has four pages with known facts:
  1. cover and letter to shareholders (prose: headquarters, CEO, revenue growth)
  2. financial highlights: a table with the fiscal year *and the prior year* as columns
  3. segment results: a table and a bar chart of revenue by business segment
  4. outlook: employees, facilities, dividend policy (prose)
Facts come from a seeded generator, so the corpus, its page ids and its ground truth are reproducible, byte for byte
(the encrypted file included). ``questions.jsonl`` lists given positive questions with their page and answer, and
``facts.jsonl`` every fact with the page that states it: the ground truth for tests of negatives (e.g. a question
that changes 2021 to 2020 *is* answerable from the 2021 report's highlights page, whose table has a 2020 column).

Two sizes. ``make_corpus`` (``sample:N``, the tests): N of 6 companies, 2021-2023, one question per page.
``make_local_corpus`` (``sample:``, the local default): made to show the method's point, fine-grained confusion.
Four families of two sibling companies share a name, a sector, the segments and the page layout, with figures of
the same size ("Norvalis Energy" and "Norvalis Power"), over five years (2019-2023) of identical layout, so the
right table of the wrong year or of the sibling is always at hand. Each report gets 11 questions (one per
fact: revenue, operating and net income, R&D, capital expenditure, dividend, largest segment, one segment's
revenue, employees, facilities, the letter's signatory), 4 in 10 phrased without the page's words ("How much
did Norvalis Power sell in 2021?"), each with every page that answers it (``relevant``: a year's figures are
also in the next report's prior-year column): 440 questions over 160 pages.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COMPANIES = [
    ("Norvalis Energy", "Tallinn", ["Wind Power", "Grid Services", "Energy Storage"]),
    ("Quintara Foods", "Porto", ["Dairy", "Bakery", "Frozen Meals"]),
    ("Helmsworth Logistics", "Rotterdam", ["Freight Forwarding", "Warehousing", "Last-Mile Delivery"]),
    ("Brightwater Semiconductors", "Eindhoven", ["Memory Chips", "Power Devices", "Sensors"]),
    ("Castellan Insurance", "Zurich", ["Life Insurance", "Property Insurance", "Reinsurance"]),
    ("Orbiton Telecom", "Helsinki", ["Mobile", "Fixed Broadband", "Cloud Services"]),
]
CEOS = ["Maren Holt", "Idris Okafor", "Lucia Ferraz", "Tomas Varga", "Ingrid Solberg", "Rafael Mendes"]
METRICS = [("revenue", "Revenue"), ("operating_income", "Operating income"), ("net_income", "Net income"),
           ("rd_expense", "Research and development expense"), ("capex", "Capital expenditure")]
YEARS = [2021, 2022, 2023]


@dataclass(frozen=True)
class Fact:
    """One fact of the ground truth: the page of ``doc`` that states ``attribute`` = ``value``."""

    doc: str  # file name
    page_number: int
    company: str
    year: int
    attribute: str
    value: str


def _money(x: float) -> str:
    return f"${x:,.1f} million"


def company_facts(rng: random.Random, company: str, segments: list[str], years: list[int]) -> dict:
    """Yearly metrics (for each year and the one before), segment revenue, employees, dividends."""
    base = rng.uniform(800, 9000)
    data = {}
    for y in [years[0] - 1, *years]:
        growth = rng.uniform(-0.06, 0.18)
        base *= 1 + growth
        rev = round(base, 1)
        op = round(rev * rng.uniform(0.06, 0.22), 1)
        shares = [rng.uniform(0.15, 0.5) for _ in segments]
        s = sum(shares)
        data[y] = {
            "revenue": rev,
            "operating_income": op,
            "net_income": round(op * rng.uniform(0.55, 0.8), 1),
            "rd_expense": round(rev * rng.uniform(0.02, 0.09), 1),
            "capex": round(rev * rng.uniform(0.04, 0.12), 1),
            "segments": {seg: round(rev * sh / s, 1) for seg, sh in zip(segments, shares)},
            "employees": int(rev * rng.uniform(2.5, 6.0)),
            "dividend": round(rng.uniform(0.4, 3.2), 2),
            "plants": rng.randint(4, 40),
        }
    return data


def _text(page, x: float, y: float, s: str, size: float = 10, bold: bool = False) -> None:
    page.insert_text((x, y), s, fontsize=size, fontname="hebo" if bold else "helv")


def _para(page, rect, s: str, size: float = 10.5) -> None:
    import pymupdf

    page.insert_textbox(pymupdf.Rect(*rect), s, fontsize=size, fontname="helv")


def _table(page, x: float, y: float, header: list[str], rows: list[list[str]], widths: list[float]) -> float:
    row_h = 20
    for i, row in enumerate([header, *rows]):
        cx = x
        for j, (cell, w) in enumerate(zip(row, widths)):
            page.draw_rect((cx, y + i * row_h, cx + w, y + (i + 1) * row_h), color=(0.4, 0.4, 0.4), width=0.5)
            tx = cx + 4 if j == 0 else cx + w - 4 - len(cell) * 5.2
            _text(page, tx, y + i * row_h + 14, cell, size=9.5, bold=i == 0)
            cx += w
    return y + (len(rows) + 1) * row_h


def _bar_chart(page, x: float, y: float, title: str, values: dict[str, float]) -> None:
    _text(page, x, y, title, size=11, bold=True)
    top = max(values.values())
    for i, (label, v) in enumerate(values.items()):
        h = 160 * v / top
        bx = x + 20 + i * 140
        page.draw_rect((bx, y + 200 - h, bx + 60, y + 200), color=(0.1, 0.3, 0.6), fill=(0.25, 0.5, 0.8))
        _text(page, bx, y + 215, label, size=8.5)
        _text(page, bx, y + 195 - h, f"{v:,.1f}", size=8.5)


def render_report(path: Path, company: str, hq: str, ceo: str, segments: list[str], year: int, d: dict) -> list[Fact]:
    """Write one 4-page report PDF and return the facts each page states."""
    import pymupdf

    cur, prev = d[year], d[year - 1]
    name = path.name
    growth = 100 * (cur["revenue"] / prev["revenue"] - 1)
    doc = pymupdf.open()
    facts: list[Fact] = []

    def fact(page: int, attribute: str, value, y: int = year):
        facts.append(Fact(name, page, company, y, attribute, str(value)))

    p = doc.new_page(width=595, height=842)
    _text(p, 60, 110, company, size=26, bold=True)
    _text(p, 60, 145, f"Annual Report {year}", size=18)
    _para(p, (60, 200, 535, 600), (
        f"Letter to shareholders. Dear shareholders, fiscal {year} was a year of "
        f"{'growth' if growth >= 0 else 'adjustment'} for {company}. Revenue "
        f"{'rose' if growth >= 0 else 'fell'} {abs(growth):.1f} percent to {_money(cur['revenue'])}. "
        f"From our headquarters in {hq}, our teams served customers across three business segments: "
        f"{', '.join(segments)}. I want to thank our employees for their commitment.\n\n"
        f"{ceo}, Chief Executive Officer"))
    fact(1, "headquarters", hq)
    fact(1, "ceo", ceo)
    fact(1, "revenue_growth_pct", f"{growth:.1f}")

    p = doc.new_page(width=595, height=842)
    _text(p, 60, 80, "Financial highlights", size=18, bold=True)
    _text(p, 60, 105, f"{company}, fiscal years {year} and {year - 1}, in millions of US dollars", size=10)
    rows = [[label, f"{cur[k]:,.1f}", f"{prev[k]:,.1f}"] for k, label in METRICS]
    rows.append(["Dividend per share ($)", f"{cur['dividend']:.2f}", f"{prev['dividend']:.2f}"])
    end = _table(p, 60, 130, ["", str(year), str(year - 1)], rows, [260, 100, 100])
    _para(p, (60, end + 30, 535, end + 200), (
        f"Operating margin was {100 * cur['operating_income'] / cur['revenue']:.1f} percent in {year}, compared "
        f"with {100 * prev['operating_income'] / prev['revenue']:.1f} percent in {year - 1}."))
    for k, _ in METRICS:
        fact(2, k, _money(cur[k]))
        fact(2, k, _money(prev[k]), y=year - 1)
    fact(2, "dividend_per_share", f"${cur['dividend']:.2f}")
    fact(2, "dividend_per_share", f"${prev['dividend']:.2f}", y=year - 1)

    p = doc.new_page(width=595, height=842)
    _text(p, 60, 80, "Segment results", size=18, bold=True)
    seg = cur["segments"]
    rows = [[s, f"{v:,.1f}", f"{100 * v / cur['revenue']:.1f}%"] for s, v in seg.items()]
    end = _table(p, 60, 110, ["Segment", f"Revenue {year}", "Share"], rows, [220, 120, 100])
    _bar_chart(p, 60, end + 50, f"Revenue by segment, {year} ($ million)", seg)
    best = max(seg, key=seg.get)
    for s, v in seg.items():
        fact(3, f"segment_revenue:{s}", _money(v))
    fact(3, "largest_segment", best)

    p = doc.new_page(width=595, height=842)
    _text(p, 60, 80, "Outlook and operations", size=18, bold=True)
    _para(p, (60, 110, 535, 500), (
        f"At the end of fiscal {year}, {company} employed {cur['employees']:,} people and operated "
        f"{cur['plants']} facilities. The board proposes a dividend of ${cur['dividend']:.2f} per share. "
        f"For the coming year we expect demand in {best} to remain strong, while investment in "
        f"{segments[0]} continues. Risks include currency movements, supply constraints and regulation."))
    fact(4, "employees", f"{cur['employees']:,}")
    fact(4, "facilities", cur["plants"])
    for i, page in enumerate(doc, start=1):  # running header and footer, as real reports have
        _text(page, 60, 40, f"{company}  |  Annual Report {year}", size=8)
        _text(page, 500, 815, f"page {i}", size=8)
    doc.set_metadata({"title": f"{company} Annual Report {year}", "creationDate": f"D:{year + 1}0301000000Z",
                      "modDate": f"D:{year + 1}0301000000Z", "producer": "docrerank sample corpus"})
    doc.save(path, garbage=3, deflate=True, no_new_id=True)  # byte-identical on every machine: stable page ids
    doc.close()
    return facts


def questions_for(facts: list[Fact]) -> list[dict]:
    """Given positive questions (one per page) with answers, from a report's facts."""
    by = {(f.page_number, f.attribute, f.year): f for f in facts}
    f0 = facts[0]
    c, y, doc = f0.company, f0.year, f0.doc
    q = [
        (1, f"Where is {c} headquartered?", by[(1, "headquarters", y)].value),
        (2, f"What was {c}'s total revenue in fiscal {y}?", by[(2, "revenue", y)].value),
        (3, f"Which business segment generated the most revenue for {c} in {y}?", by[(3, "largest_segment", y)].value),
        (4, f"How many people did {c} employ at the end of {y}?", by[(4, "employees", y)].value),
    ]
    return [{"doc": doc, "page_number": p, "question": t, "answer": a} for p, t, a in q]


def _fresh(out: Path) -> None:
    """An empty ``pdfs/`` under ``out``: no file of another corpus (size, seed) stays to be ingested with this one."""
    import shutil

    shutil.rmtree(out / "pdfs", ignore_errors=True)
    (out / "pdfs").mkdir(parents=True)


def make_corpus(out_dir: str | Path, num_companies: int = 6, years: list[int] | None = None, seed: int = 0) -> Path:
    """Write the sample corpus (PDFs, facts.jsonl, questions.jsonl) to ``out_dir``; idempotent."""
    out = Path(out_dir)
    years = years or YEARS
    if not 1 <= num_companies <= len(COMPANIES):
        raise ValueError(f"num_companies: expected 1..{len(COMPANIES)}, got {num_companies}")
    marker = out / "corpus.json"
    spec = {"num_companies": num_companies, "years": years, "seed": seed, "version": 3}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return out
    _fresh(out)
    all_facts, all_q = [], []
    for i, (company, hq, segments) in enumerate(COMPANIES[:num_companies]):
        rng = random.Random(f"{seed}-{company}")
        data = company_facts(rng, company, segments, years)
        for y in years:
            path = out / "pdfs" / f"{company.lower().replace(' ', '_')}_{y}.pdf"
            facts = render_report(path, company, hq, CEOS[i], segments, y, data)
            all_facts += facts
            all_q += questions_for(facts)
    (out / "facts.jsonl").write_text("".join(json.dumps(f.__dict__) + "\n" for f in all_facts))
    (out / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in all_q))
    marker.write_text(json.dumps(spec))
    return out


# ------------------------------------------------------------------------------- the local default's corpus
FAMILIES = [  # (company, headquarters, CEO) x 2 per family, the family's segments
    ((("Norvalis Energy", "Tallinn", "Maren Holt"), ("Norvalis Power", "Riga", "Idris Okafor")),
     ["Wind Power", "Grid Services", "Energy Storage"]),
    ((("Quintara Foods", "Porto", "Lucia Ferraz"), ("Quintara Brands", "Lisbon", "Tomas Varga")),
     ["Dairy", "Bakery", "Frozen Meals"]),
    ((("Helmsworth Logistics", "Rotterdam", "Ingrid Solberg"), ("Helmsworth Freight", "Antwerp", "Rafael Mendes")),
     ["Freight Forwarding", "Warehousing", "Last-Mile Delivery"]),
    ((("Brightwater Semiconductors", "Eindhoven", "Anika Brandt"), ("Brightwater Devices", "Dresden",
                                                                      "Jonas Lindqvist")),
     ["Memory Chips", "Power Devices", "Sensors"]),
]
LOCAL_YEARS = [2019, 2020, 2021, 2022, 2023]
PARAPHRASED = 0.4  # share of questions phrased without the page's words
# attribute -> (the page's words, other words), {c} company, {y} year, {s} segment; where: pages of report y (and
# of report y + 1, whose highlights table has year y as its prior-year column) that state the answer
QUESTIONS = {
    "revenue": ("What was {c}'s total revenue in fiscal {y}?", "How much did {c} sell in {y}?"),
    "operating_income": ("What was {c}'s operating income in fiscal {y}?",
                         "How much did {c} earn from its operations in {y}?"),
    "net_income": ("What was {c}'s net income in fiscal {y}?", "What profit did {c} keep after all costs in {y}?"),
    "rd_expense": ("What was {c}'s research and development expense in fiscal {y}?",
                   "How much did {c} spend on innovation in {y}?"),
    "capex": ("What was {c}'s capital expenditure in fiscal {y}?",
              "How much did {c} invest in plants and equipment in {y}?"),
    "dividend_per_share": ("What dividend per share did {c} pay for fiscal {y}?",
                           "How much did each {c} shareholder receive per share for {y}?"),
    "largest_segment": ("Which business segment generated the most revenue for {c} in {y}?",
                        "Which part of {c}'s business brought in the most money in {y}?"),
    "segment_revenue": ("What was the revenue of {c}'s {s} segment in {y}?",
                        "How much did the {s} business bring in for {c} in {y}?"),
    "employees": ("How many people did {c} employ at the end of {y}?", "How large was {c}'s workforce when {y} ended?"),
    "facilities": ("How many facilities did {c} operate at the end of {y}?",
                   "How many sites did {c} run when {y} closed?"),
    "ceo": ("Who signed the letter to shareholders in {c}'s annual report {y}?",
            "Who wrote to {c}'s investors about {y} as chief executive?"),
}
WHERE = {"revenue": ([1, 2], [2]), "dividend_per_share": ([2, 4], [2]), "largest_segment": ([3], []),
         "segment_revenue": ([3], []), "employees": ([4], []), "facilities": ([4], []), "ceo": ([1], [])}


def _file(company: str, year: int) -> str:
    return f"{company.lower().replace(' ', '_')}_{year}.pdf"


def local_questions(company: str, year: int, d: dict, years: list[int], rng: random.Random) -> list[dict]:
    """The 11 questions of one report, each with its answer and every page that states it (``relevant``)."""
    cur = d[year]
    seg = rng.choice(sorted(cur["segments"]))
    answers = {"revenue": _money(cur["revenue"]), "dividend_per_share": f"${cur['dividend']:.2f}",
               "largest_segment": max(cur["segments"], key=cur["segments"].get),
               "segment_revenue": _money(cur["segments"][seg]), "employees": f"{cur['employees']:,}",
               "facilities": str(cur["plants"]), "ceo": d["ceo"]}
    out = []
    for attr, forms in QUESTIONS.items():
        here, nxt = WHERE.get(attr, ([2], [2]))
        rel = [{"doc": _file(company, year), "page_number": n} for n in here]
        if year + 1 in years:
            rel += [{"doc": _file(company, year + 1), "page_number": n} for n in nxt]
        para = rng.random() < PARAPHRASED
        out.append({"doc": rel[0]["doc"], "page_number": rel[0]["page_number"],
                    "question": forms[para].format(c=company, y=year, s=seg),
                    "answer": answers.get(attr) or _money(cur[attr]), "attribute": attr, "paraphrased": para,
                    "relevant": rel})
    return out


def make_local_corpus(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the local default's corpus (``sample:``; see the module docstring): PDFs, facts.jsonl, questions.jsonl
    (with ``relevant`` pages) under ``out_dir``; idempotent."""
    out = Path(out_dir)
    marker = out / "corpus.json"
    spec = {"edition": "local", "years": LOCAL_YEARS, "seed": seed, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return out
    _fresh(out)
    all_facts, all_q = [], []
    for (first, second), segments in FAMILIES:
        base = company_facts(random.Random(f"{seed}-{first[0]}"), first[0], segments, LOCAL_YEARS)
        for company, hq, ceo in (first, second):
            rng = random.Random(f"{seed}-{company}")
            data = company_facts(rng, company, segments, LOCAL_YEARS)
            if company != first[0]:  # the sibling: figures of the same size as the first's, look-alike tables
                for y, row in data.items():
                    scale = base[y]["revenue"] / row["revenue"] * rng.uniform(0.85, 1.15)
                    for k in ("revenue", "operating_income", "net_income", "rd_expense", "capex"):
                        row[k] = round(row[k] * scale, 1)
                    row["segments"] = {s: round(v * scale, 1) for s, v in row["segments"].items()}
                    row["employees"] = int(row["employees"] * scale)
            data["ceo"] = ceo
            for y in LOCAL_YEARS:
                all_facts += render_report(out / "pdfs" / _file(company, y), company, hq, ceo, segments, y, data)
                all_q += local_questions(company, y, data, LOCAL_YEARS, rng)
    (out / "facts.jsonl").write_text("".join(json.dumps(f.__dict__) + "\n" for f in all_facts))
    (out / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in all_q))
    marker.write_text(json.dumps(spec))
    return out


# -------------------------------------------------------------------------------------------- problem files
SAMPLE_PREFIX = "sample:"
SAMPLE_PASSWORD = "sample"
# A one-page "Confidential board pack", AES-256 encrypted (user password "sample"), made once with PyMuPDF and kept
# as bytes: encrypting draws random salts and a random file id, so writing it anew would change its bytes (and its
# page ids) on every run.
BOARD_PACK = (
    "JVBERi0xLjcKJcK1wrYKJSBXcml0dGVuIGJ5IE11UERGIDEuMjguNQoKMSAwIG9iago8PC9UeXBlL0NhdGFsb2cvUGFnZXMgMiAwIFIvSW5m"
    "bzw8L1Byb2R1Y2VyPEE1QzI4NEZFQjg5NDA0NkVFQkIzRDY4NkQ3MkZERkExNUEwRDZENjYyNjFBNkFDQkE4NDI4MDdDOTNCNjMyQzg+Pj4+"
    "PgplbmRvYmoKCjIgMCBvYmoKPDwvVHlwZS9QYWdlcy9Db3VudCAxL0tpZHNbNCAwIFJdPj4KZW5kb2JqCgozIDAgb2JqCjw8L0ZvbnQ8PC9o"
    "ZWJvIDUgMCBSL2hlbHYgNyAwIFI+Pj4+CmVuZG9iagoKNCAwIG9iago8PC9UeXBlL1BhZ2UvTWVkaWFCb3hbMCAwIDU5NSA4NDJdL1JvdGF0"
    "ZSAwL1Jlc291cmNlcyAzIDAgUi9QYXJlbnQgMiAwIFIvQ29udGVudHNbNiAwIFIgOCAwIFJdPj4KZW5kb2JqCgo1IDAgb2JqCjw8L1R5cGUv"
    "Rm9udC9TdWJ0eXBlL1R5cGUxL0Jhc2VGb250L0hlbHZldGljYS1Cb2xkL0VuY29kaW5nL1dpbkFuc2lFbmNvZGluZz4+CmVuZG9iagoKNiAw"
    "IG9iago8PC9MZW5ndGggMTEyL0ZpbHRlci9GbGF0ZURlY29kZT4+CnN0cmVhbQqI97bMmS152gJR47hftigScFTbjivYzE8xuUTMt+Rz5Ork"
    "5yTScKYjosktd7CbFngTSU+sYJCcxjVDDMCKLNWh4SjuD8EtV/KMmPIf2+XJB11bNKP2jaKP8CFhEoqZIuNarrW0+a1QhT4H/Ea03ZwQCmVu"
    "ZHN0cmVhbQplbmRvYmoKCjcgMCBvYmoKPDwvVHlwZS9Gb250L1N1YnR5cGUvVHlwZTEvQmFzZUZvbnQvSGVsdmV0aWNhL0VuY29kaW5nL1dp"
    "bkFuc2lFbmNvZGluZz4+CmVuZG9iagoKOCAwIG9iago8PC9MZW5ndGggMjQwL0ZpbHRlci9GbGF0ZURlY29kZT4+CnN0cmVhbQr7Q2RzycUn"
    "dMBtHDw50bE6rF/ySvBwULKP4ilq5i0O5DjtCQR2W71wImbcygnBKX75elfvPFeinkArewr7KKhSyFa6QaaQKXyT1m6iYQZIXVbv6lE3YqxG"
    "yjKYd+hNwon/P683ZdJ5YYhnNjO49PGnbLgoIq/LC0akdGZ1cHeEtweeQ2Y8+SNus3WtQMIctFn5Dve5/0F9pPJLICJMHtMgerf5axoMf3wm"
    "rand0raWvs0zfEh1QJQHmtzra2Qd5d/i39+KJeMDUnjlTxaUy+W0joil1nJXID7MxAWTupgcjjp+6EArpGEq9GSkTGgQ+t0KZW5kc3RyZWFt"
    "CmVuZG9iagoKeHJlZgowIDkKMDAwMDAwMDAwMCA2NTUzNSBmIAowMDAwMDAwMDQyIDAwMDAwIG4gCjAwMDAwMDAxNzIgMDAwMDAgbiAKMDAw"
    "MDAwMDIyNCAwMDAwMCBuIAowMDAwMDAwMjc2IDAwMDAwIG4gCjAwMDAwMDAzODkgMDAwMDAgbiAKMDAwMDAwMDQ4MyAwMDAwMCBuIAowMDAw"
    "MDAwNjY0IDAwMDAwIG4gCjAwMDAwMDA3NTMgMDAwMDAgbiAKCnRyYWlsZXIKPDwvU2l6ZSA5L1Jvb3QgMSAwIFIvSURbPEMzODYyOTczQzM5"
    "OUMyQjQxMUMzQkRDMjlFMDI2QjU3PjxERkVCRDVCM0JDQkM4QTY4NDM5QzMwOEFBNEExOTdDMD5dL0VuY3J5cHQ8PC9GaWx0ZXIvU3RhbmRh"
    "cmQvUiA2L1YgNS9MZW5ndGggMjU2L1AgLTQvRW5jcnlwdE1ldGFkYXRhIHRydWUvU3RtRi9TdGRDRi9TdHJGL1N0ZENGL0NGPDwvU3RkQ0Y8"
    "PC9BdXRoRXZlbnQvRG9jT3Blbi9DRk0vQUVTVjMvTGVuZ3RoIDMyPj4+Pi9PPDdCN0UyRTMyNjZBQTc1NTJCMUUzMjU4NDU1Q0YwOTQ2ODUx"
    "RjBCNUEyNzU3ODdFMzQ4Q0EyQ0Q3QTQ5QzQ1MDU4OTJENDExRkJGQjU3NzlEQkJDNjBGRjVCNDgxNDg4NT4vVTwxQzZCQTE3QzcxOEYwOUQw"
    "MTQ3MjE5Q0NDNEUwQzJDQ0M2OUUzQjcxQUEwMzM1NDE1QUQ5NDkyQTZDMzk0QzFDNTVENDdENjkwRDVDOTc1ODE4NUUxOTAxQTVCMkRCNEQ+"
    "L09FPEE3RjEwQUM4NEEzQzNFQkEyOTlCRjlDN0I1OUVDNTRCRUIyQjZBNDU3RjhBM0U0QzRGN0U0MUExREExOUNERkE+L1VFPENGMTJCODFE"
    "NDg0NDgwRjkxRTlCQzQxNUQyMUQ5QzUzNkRGQTVFMjhBMzUxQTA0RTNCOEZBODY5RjcwQkM3RkY+L1Blcm1zPDgyMjBBMUUwMEEwODVDRkZF"
    "MjlDOUI5MTRDMzQ5QThBPj4+Pj4Kc3RhcnR4cmVmCjEwNjIKJSVFT0YK"
)


def add_problem_files(out_dir: str | Path) -> None:
    """Add the kinds of files real corpora hold: an encrypted board pack (password ``sample``) and an empty upload;
    the same bytes on every run."""
    import base64

    pdfs = Path(out_dir) / "pdfs"
    (pdfs / "confidential_board_pack.pdf").write_bytes(base64.b64decode(BOARD_PACK))
    (pdfs / "broken_upload.pdf").write_bytes(b"")


def resolve_input(spec: str, output: str) -> str:
    """``sample:`` -> make the local default's corpus (``make_local_corpus``), ``sample:N`` -> the small corpus of N
    companies (``make_corpus``), under ``<output>/sample_corpus``, with the problem files; returns its PDF
    directory. Any other spec is returned unchanged."""
    if not spec.startswith(SAMPLE_PREFIX):
        return spec
    if "://" in output:
        raise ValueError(f"input: {spec!r} makes a local sample corpus; output must be a local path, got {output!r}")
    rest = spec[len(SAMPLE_PREFIX):]
    if rest and not rest.isdigit():
        raise ValueError(f"input: expected 'sample:' or 'sample:N' (N companies), got {spec!r}")
    where = Path(output) / "sample_corpus"
    out = make_corpus(where, num_companies=int(rest)) if rest else make_local_corpus(where)
    add_problem_files(out)
    return str(out / "pdfs")
