"""The ingest's books: what the output already holds, and whether every input document and page is written or
quarantined with a reason (or the job fails loudly). Computed from the output directory itself, so they hold
across resumed runs."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from docrerank.core import storage
from docrerank.core.runtime import format_table


@dataclass
class OutputState:
    """Documents, quarantine rows and finished pages already in the output."""

    documents: dict[str, dict] = field(default_factory=dict)  # doc_id -> documents row
    doc_quarantine: dict[str, dict] = field(default_factory=dict)  # source_uri -> doc-level quarantine row
    page_quarantine: dict[str, set[int]] = field(default_factory=dict)  # doc_id -> page numbers
    pages_done: dict[str, set[int]] = field(default_factory=dict)  # doc_id -> page numbers
    page_rows: int = 0
    page_quarantine_reasons: collections.Counter = field(default_factory=collections.Counter)

    @property
    def known_uris(self) -> set[str]:
        """Inputs already probed: opened as a document or quarantined as a whole."""
        return {d["source_uri"] for d in self.documents.values()} | set(self.doc_quarantine)


def load_state(out: storage.Location) -> OutputState:
    """Read ``documents/``, ``quarantine/`` and the ids of ``pages/`` under ``out`` (empty when absent)."""
    from docrerank.core.schema import documents_schema, pages_schema, quarantine_schema

    st = OutputState()
    for r in storage.read_parquet_dir(out.join("documents"), schema=documents_schema()).to_pylist():
        st.documents.setdefault(r["doc_id"], r)
    q = storage.read_parquet_dir(out.join("quarantine"), schema=quarantine_schema())
    for r in q.to_pylist():
        if r["page_number"] is None:
            st.doc_quarantine.setdefault(r["source_uri"], r)
        else:
            st.page_quarantine.setdefault(r["doc_id"], set()).add(r["page_number"])
            st.page_quarantine_reasons[r["error"]] += 1
    p = storage.read_parquet_dir(out.join("pages"), columns=["doc_id", "page_number"], schema=pages_schema())
    st.page_rows = p.num_rows
    for d, n in zip(p.column("doc_id").to_pylist(), p.column("page_number").to_pylist()):
        st.pages_done.setdefault(d, set()).add(n)
    return st


@dataclass
class Books:
    """Counts of documents and pages by outcome, and every way in which they fail to balance."""

    inputs: int = 0
    documents_written: int = 0  # at least one page in pages/
    documents_complete: int = 0  # every page in pages/
    documents_quarantined: collections.Counter = field(default_factory=collections.Counter)
    pages_expected: int = 0
    pages_written: int = 0
    pages_quarantined: collections.Counter = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        """True when every input and page is accounted for exactly once."""
        return not self.problems

    def to_dict(self) -> dict:
        """The books as written to ``ingest_stats.json`` (and read by :func:`summary_table`)."""
        return {
            "documents": {
                "input": self.inputs,
                "written": self.documents_written,
                "complete": self.documents_complete,
                "quarantined": sum(self.documents_quarantined.values()),
                "quarantined_by_reason": dict(sorted(self.documents_quarantined.items())),
            },
            "pages": {
                "expected": self.pages_expected,
                "written": self.pages_written,
                "quarantined": sum(self.pages_quarantined.values()),
                "quarantined_by_reason": dict(sorted(self.pages_quarantined.items())),
            },
            "balanced": self.balanced,
            "problems": self.problems[:100],
        }


def balance(inputs: list[str], st: OutputState) -> Books:
    """Check that every input URI and every page of every document is accounted for exactly once."""
    b = Books(inputs=len(inputs))
    by_uri = {d["source_uri"]: d for d in st.documents.values()}
    for uri in inputs:
        if uri in by_uri:
            continue
        q = st.doc_quarantine.get(uri)
        if q is None:
            b.problems.append(f"input {uri}: neither in documents/ nor in quarantine/")
        else:
            b.documents_quarantined[q["error"]] += 1
    b.pages_quarantined.update(st.page_quarantine_reasons)
    for doc_id, d in st.documents.items():
        n = d["num_pages"]
        b.pages_expected += n
        done = st.pages_done.get(doc_id, set())
        bad = st.page_quarantine.get(doc_id, set())
        b.pages_written += len(done)
        b.documents_written += bool(done)
        b.documents_complete += len(done) == n
        both = done & bad
        missing = set(range(1, n + 1)) - done - bad
        if both:
            b.problems.append(f"doc {doc_id}: pages {sorted(both)[:10]} both written and quarantined")
        if missing:
            b.problems.append(f"doc {doc_id} ({d['source_uri']}): pages {sorted(missing)[:10]} missing")
    if st.page_rows != b.pages_written:
        b.problems.append(f"pages/ holds {st.page_rows} rows for {b.pages_written} distinct pages (duplicates)")
    return b


def summary_table(stats: dict) -> str:
    """The table a person reads at the end of the job, from the books' :meth:`Books.to_dict` (or the ingest's
    stats, which hold them)."""
    docs, pages = stats["documents"], stats["pages"]
    by_doc, by_page = docs["quarantined_by_reason"], pages["quarantined_by_reason"]
    rows = [
        ["inputs", docs["input"], pages["expected"]],
        ["written", docs["written"], pages["written"]],
        ["  complete", docs["complete"], ""],
        ["quarantined", docs["quarantined"], pages["quarantined"]],
    ]
    for r in sorted(set(by_doc) | set(by_page)):
        rows.append([f"  {r}", by_doc.get(r, "") or "", by_page.get(r, "") or ""])
    rows.append(["books balance", "yes" if stats["balanced"] else "NO", ""])
    return format_table(["", "documents", "pages"], rows)
