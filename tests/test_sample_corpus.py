"""The local default's sample corpus: byte-for-byte reproducible (the encrypted file too), sibling companies with
look-alike tables over five years, and ground truth that holds: every page a question lists as relevant states its
answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    from docrerank.render.sample_corpus import resolve_input

    out = tmp_path_factory.mktemp("a")
    return resolve_input("sample:", str(out)), out / "sample_corpus"


def test_every_file_is_the_same_bytes_on_every_run(local, tmp_path):
    from docrerank.render.sample_corpus import make_corpus, resolve_input

    pdfs, _ = local
    again = resolve_input("sample:", str(tmp_path / "b"))
    from pathlib import Path

    first = {p.name: p.read_bytes() for p in Path(pdfs).iterdir()}
    second = {p.name: p.read_bytes() for p in Path(again).iterdir()}
    assert first == second and len(first) == 8 * 5 + 2
    assert first["broken_upload.pdf"] == b""
    # the small corpus of the tests (sample:N) too, and a switch between the two leaves no stale file behind
    small = resolve_input("sample:2", str(tmp_path / "b"))
    assert sorted(p.name for p in Path(small).iterdir()) == sorted(
        [p.name for p in make_corpus(tmp_path / "c", num_companies=2).joinpath("pdfs").iterdir()]
        + ["broken_upload.pdf", "confidential_board_pack.pdf"])


def test_the_encrypted_board_pack_opens_with_the_password_only(local):
    import pymupdf

    from docrerank.render.sample_corpus import SAMPLE_PASSWORD

    pdfs, _ = local
    doc = pymupdf.open(f"{pdfs}/confidential_board_pack.pdf")
    assert doc.needs_pass and not doc.authenticate("wrong")
    assert doc.authenticate(SAMPLE_PASSWORD) and "Confidential board pack" in doc[0].get_text()


def test_siblings_years_and_questions(local):
    import pymupdf

    pdfs, root = local
    questions = [json.loads(x) for x in (root / "questions.jsonl").read_text().splitlines()]
    assert len(questions) == 8 * 5 * 11
    assert 0.3 < sum(q["paraphrased"] for q in questions) / len(questions) < 0.5
    text = {}

    def page(doc, n):
        if (doc, n) not in text:
            with pymupdf.open(f"{pdfs}/{doc}") as d:
                text[(doc, n)] = d[n - 1].get_text()
        return text[(doc, n)]

    for q in questions:
        rel = q["relevant"]
        assert {"doc": q["doc"], "page_number": q["page_number"]} == rel[0]
        core = re.sub(r"^\$|( million)$", "", q["answer"])
        for r in rel:  # the ground truth holds: each relevant page states the answer
            assert core in page(r["doc"], r["page_number"]), (q["question"], r)
        if q["paraphrased"]:  # phrased without the words the page uses for it
            assert not re.search(r"revenue|income|employ|facilities|capital expenditure|segment|signed",
                                 q["question"]), q["question"]
    # siblings: the same highlights layout, figures of the same size, different companies
    a, b = page("norvalis_energy_2021.pdf", 2), page("norvalis_power_2021.pdf", 2)
    def labels(t):
        return [re.sub(r"[\d.]+", "N", w).replace("Norvalis Power", "Norvalis Energy") for w in t.split("\n")
                if w and not re.match(r"^[\d,.]+$", w)]

    assert labels(a) == labels(b)
    ra, rb = (float(t.split("\n")[t.split("\n").index("Revenue") + 1].replace(",", "")) for t in (a, b))
    assert 0.6 < ra / rb < 1.6 and ra != rb
    # the same company's reports of consecutive years: the same layout, the prior year's column repeated
    q21 = next(q for q in questions if q["question"] == "What was Norvalis Energy's total revenue in fiscal 2021?")
    assert [(r["doc"], r["page_number"]) for r in q21["relevant"]] == [
        ("norvalis_energy_2021.pdf", 1), ("norvalis_energy_2021.pdf", 2), ("norvalis_energy_2022.pdf", 2)]


def test_the_plan_counts_the_corpus_it_will_make(local, tmp_path):
    """``--plan``'s count of ``sample:`` (without making it) is the corpus made: 161 pages in 42 files (40 four-page
    reports, a one-page encrypted board pack, an empty upload); ``sample:N`` likewise."""
    import pymupdf

    from docrerank.core.plan import PlanOptions
    from docrerank.render.plan import count_input_pages
    from docrerank.render.sample_corpus import SAMPLE_PASSWORD, resolve_input

    def made(pdfs) -> tuple[int, int]:
        pages, files = 0, 0
        for p in Path(pdfs).iterdir():
            files += 1
            if p.stat().st_size:
                doc = pymupdf.open(p)
                doc.authenticate(SAMPLE_PASSWORD)
                pages += doc.page_count
        return pages, files

    pdfs, _ = local
    plan = count_input_pages("sample:", [".pdf"], PlanOptions())
    assert (plan.pages, plan.files) == made(pdfs) == (161, 42)
    small = count_input_pages("sample:2", [".pdf"], PlanOptions())
    assert (small.pages, small.files) == made(resolve_input("sample:2", str(tmp_path)))
