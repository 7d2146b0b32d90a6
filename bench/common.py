"""Shared helpers for benchmarks: the result record every benchmark writes."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    """The GPU's name, else the CPU and its core count (recorded with every result)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    import os

    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_result(name: str, metric: str, unit: str, baseline: float, value: float, **extra) -> dict:
    """Write ``bench/results/<name>.json`` with the project's standard keys and print it."""
    rec = {
        "metric": metric,
        "unit": unit,
        "baseline": round(baseline, 4),
        "value": round(value, 4),
        "ratio": round(value / baseline, 4) if baseline else None,
        "device": device_name(),
        "command": "python " + " ".join(sys.argv),
        "date": _dt.date.today().isoformat(),
        **extra,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec, indent=2))
    return rec


def shared_dir() -> Path:
    """``$DOCRERANK_SHARED`` or the ``../shared`` beside the checkout (real PDFs and the QA dev set)."""
    import os

    return Path(os.environ.get("DOCRERANK_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def qa_dev_corpus(shared: Path | None = None) -> tuple[list[str], list[str], list[dict]]:
    """The QA dev set: (page ids ``<pdf stem>-p<N>``, their text layers by PyMuPDF, the question rows); raises
    FileNotFoundError when it is not there."""
    import json

    import pymupdf

    qa = (shared or shared_dir()) / "data" / "qa_dev"
    if not (qa / "queries.jsonl").is_file():
        raise FileNotFoundError(f"the QA dev set is not at {qa} (set DOCRERANK_SHARED)")
    pymupdf.TOOLS.mupdf_display_errors(False)
    ids, texts = [], []
    for pdf in sorted((qa / "pdfs").glob("*.pdf")):
        with pymupdf.open(pdf) as doc:
            for k, page in enumerate(doc):
                ids.append(f"{pdf.stem}-p{k + 1}")
                texts.append(page.get_text("text"))
    rows = [json.loads(line) for line in (qa / "queries.jsonl").read_text().splitlines() if line.strip()]
    return ids, texts, rows


def qa_dev_pairs(top: int, max_queries: int | None = None, shared: Path | None = None):
    """Real (query, page) pairs as the evaluation makes them: the QA dev set's questions, each with its BM25 top
    ``top`` pages among all pages of the set's PDFs, queries in file order.

    Returns (queries, pages, info): one query string and one page row (``page_id``, ``text``) per pair; raises
    FileNotFoundError when the QA dev set is not there."""
    from docrerank.retrieval.retrievers import BM25Retriever

    ids, texts, rows = qa_dev_corpus(shared)
    rows = rows[:max_queries] if max_queries else rows
    run = BM25Retriever(ids, texts).search({r["qid"]: r["query"] for r in rows}, k=top)
    text_of = dict(zip(ids, texts))
    queries, pages = [], []
    for r in rows:
        for pid in run[r["qid"]]:
            queries.append(r["query"])
            pages.append({"page_id": pid, "text": text_of[pid]})
    info = {"source": "QA dev set (../shared/data/qa_dev): questions x BM25 top-%d over its %d pages" % (top, len(ids)),
            "queries": len(rows), "pairs": len(queries), "distinct_pages": len({p["page_id"] for p in pages})}
    return queries, pages, info
