"""A small training set from the sample corpus, written like the dataset build's ``examples/`` output.

``make_examples(out_dir, corpus)`` renders every page of the sample corpus (PyMuPDF, low resolution, with its
text layer), takes the given questions of ``questions.jsonl`` as positives and makes 3 negatives per positive by
changing one attribute so that the page no longer answers: the company (only when the page names the company
and not the new one), the year (to one the page does not show) or the metric (revenue -> another metric the page
does not state). One group = the positive and its 3 negatives on the same page. The page text holds the
positive's company/year but not the negatives', so a text cross-encoder has a real, learnable task.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Optional, Sequence

METRIC_SWAPS = ["net income", "operating income", "capital expenditure", "research and development expense"]
YEAR_RANGE = range(2015, 2027)


def _companies() -> list[str]:
    from docrerank.render.sample_corpus import COMPANIES

    return [c for c, _, _ in COMPANIES]


def negatives_for(question: str, company: str, text: str, rng: random.Random, k: int = 3) -> list[tuple[str, str]]:
    """Up to ``k`` (attribute, negative question) pairs the page (``text``) cannot answer, attribute types
    alternating (company, year, metric) where the page allows them."""
    low = text.lower()
    options: dict[str, list[str]] = {}
    if company in question and company in text:
        others = [c for c in _companies() if c != company and c not in text]
        options["company"] = [question.replace(company, c) for c in others]
    years = [y for y in re.findall(r"\b(?:19|20)\d\d\b", question) if y in text]
    if years:
        y = years[0]
        options["year"] = [question.replace(y, str(n)) for n in YEAR_RANGE if str(n) not in text]
    if "revenue" in question:
        options["metric"] = [question.replace("total revenue", m).replace("revenue", m) for m in METRIC_SWAPS
                             if m not in low]
    for variants in options.values():
        rng.shuffle(variants)
    out: list[tuple[str, str]] = []
    kinds = [a for a in ("company", "year", "metric") if options.get(a)]
    while len(out) < k and any(options[a] for a in kinds):
        for a in kinds:
            if options[a] and len(out) < k:
                out.append((a, options[a].pop()))
    return out


def render_pages(pdf: Path, dpi: float) -> list[tuple[str, bytes, str]]:
    """(page_id, PNG bytes, text) of every page, page ids as the ingest job makes them."""
    import pymupdf

    from docrerank.core.schema import doc_id_of, page_id_of

    data = pdf.read_bytes()
    doc_id = doc_id_of(data)
    doc = pymupdf.open(stream=data, filetype="pdf")
    try:
        out = []
        for i, page in enumerate(doc):
            pix = page.get_pixmap(matrix=pymupdf.Matrix(dpi / 72, dpi / 72), alpha=False, colorspace=pymupdf.csRGB)
            out.append((page_id_of(doc_id, i + 1), pix.tobytes("png"), page.get_text("text")))
        return out
    finally:
        doc.close()


def sample_questions(corpus: Path, companies: Optional[Sequence[int | str]] = None,
                     years: Optional[Sequence[int]] = None) -> list[dict]:
    """The sample corpus's given questions (made under ``corpus`` when missing), each with its report's
    ``company``, restricted to ``companies`` (indices or names) and ``years`` (fiscal years) when given."""
    from docrerank.render.sample_corpus import make_corpus

    if not (corpus / "questions.jsonl").is_file():
        make_corpus(corpus)
    names = _companies()
    keep = None if companies is None else {names[c] if isinstance(c, int) else c for c in companies}
    facts = [json.loads(line) for line in (corpus / "facts.jsonl").read_text().splitlines()]
    company_of = {f["doc"]: f["company"] for f in facts}
    year_of = {f["doc"]: f["year"] for f in facts if f["page_number"] == 1}
    out = []
    for line in (corpus / "questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        if (keep is None or company_of[q["doc"]] in keep) and (years is None or year_of[q["doc"]] in years):
            out.append(dict(q, company=company_of[q["doc"]]))
    return out


def make_examples(out_dir: str | Path, corpus: str | Path, *, companies: Optional[Sequence[int | str]] = None,
                  years: Optional[Sequence[int]] = None, dpi: float = 24.0, groups_per_file: int = 16,
                  seed: int = 0) -> Path:
    """Write examples Parquet shards (``examples_schema()``) for the sample corpus under ``corpus`` (made there
    when missing) to ``out_dir``; ``companies`` (indices or names) and ``years`` (fiscal years of the reports)
    restrict the reports used. Returns ``out_dir``."""
    import pyarrow as pa

    from docrerank.core import storage
    from docrerank.core.schema import examples_schema

    corpus = Path(corpus)
    pages: dict[str, list] = {}
    groups: list[list[dict]] = []
    for q in sample_questions(corpus, companies, years):
        if q["doc"] not in pages:
            pages[q["doc"]] = render_pages(corpus / "pdfs" / q["doc"], dpi)
        page_id, image, text = pages[q["doc"]][q["page_number"] - 1]
        rng = random.Random(f"{seed}/{page_id}/{q['question']}")
        negs = negatives_for(q["question"], q["company"], text, rng)
        if len(negs) < 3:
            raise ValueError(f"{q['doc']} page {q['page_number']}: only {len(negs)} negatives for {q['question']!r}")
        gid = hashlib.sha256(f"{page_id}\n{q['question']}".encode()).hexdigest()[:16]
        base = dict(group_id=gid, page_id=page_id, image=image, image_format="png", text=text)
        rows = [dict(base, query=q["question"], label=1, kind="positive", attribute=None)]
        rows += [dict(base, query=n, label=0, kind="generated", attribute=a) for a, n in negs]
        groups.append(rows)
    if not groups:
        raise ValueError(f"make_examples: no questions for companies {companies} and years {years}")
    out = storage.resolve(str(out_dir))
    for i in range(0, len(groups), groups_per_file):
        rows = [r for g in groups[i:i + groups_per_file] for r in g]
        table = pa.Table.from_pylist(rows, schema=examples_schema())
        storage.write_table_atomic(out.join(f"part-{i // groups_per_file:05d}.parquet"), table)
    return Path(out.path)


def make_split(out_dir: str | Path, corpus: str | Path, val_years: Sequence[int] = (2023,), **kwargs) -> Path:
    """``<out_dir>/train`` and ``<out_dir>/val``: the reports of ``val_years`` held out (their pages are unseen)."""
    import json as _json

    from docrerank.render.sample_corpus import YEARS, make_corpus

    make_corpus(corpus)
    years = _json.loads((Path(corpus) / "corpus.json").read_text()).get("years", YEARS)
    make_examples(Path(out_dir) / "train", corpus, years=[y for y in years if y not in val_years], **kwargs)
    make_examples(Path(out_dir) / "val", corpus, years=list(val_years), **kwargs)
    return Path(out_dir)


def make_beir(out_dir: str | Path, corpus: str | Path, *, companies: Optional[Sequence[int | str]] = None,
              years: Optional[Sequence[int]] = None, dpi: float = 24.0, with_text: bool = True) -> Path:
    """A BEIR-layout benchmark of the sample corpus, as ViDoRe V2 / REAL-MM-RAG publish theirs: ``corpus/``
    (``corpus-id`` int, ``image`` as the datasets library's {bytes, path} struct, ``doc-id``, ``text`` unless
    ``with_text`` is false), ``queries/`` (``query-id``, ``query``), ``qrels/`` (``query-id``, ``corpus-id``,
    ``score``), each one ``test-00000-of-00001.parquet``. Returns ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = Path(corpus)
    questions = sample_questions(corpus, companies, years)
    docs = sorted({q["doc"] for q in questions})
    if not docs:
        raise ValueError(f"make_beir: no documents for companies {companies} and years {years}")
    rows, ids = [], {}
    for doc in docs:
        for n, (_, image, text) in enumerate(render_pages(corpus / "pdfs" / doc, dpi), start=1):
            ids[(doc, n)] = len(rows)
            row = {"corpus-id": len(rows), "image": {"bytes": image, "path": f"{doc}-{n}.png"}, "doc-id": doc}
            if with_text:
                row["text"] = text
            rows.append(row)
    queries, qrels = [], []
    for q in questions:
        if q["doc"] in docs:
            queries.append({"query-id": len(queries), "query": q["question"]})
            qrels.append({"query-id": queries[-1]["query-id"], "corpus-id": ids[(q["doc"], q["page_number"])],
                          "score": 1})
    out = Path(out_dir)
    for name, table in (("corpus", rows), ("queries", queries), ("qrels", qrels)):
        (out / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(table), out / name / "test-00000-of-00001.parquet")
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m docrerank.testing.examples OUT_DIR   (writes OUT_DIR/train, OUT_DIR/val and the "
                 "sample corpus in OUT_DIR/sample_corpus)")
    out = make_split(sys.argv[1], Path(sys.argv[1]) / "sample_corpus")
    print(f"examples written to {out}/train and {out}/val")
