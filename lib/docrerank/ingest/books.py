"""The ingest's books: every input document and page is written or quarantined with a reason, or the
job fails loudly. Computed from the output directory itself, so they hold across resumed runs."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from docrerank.ingest.run import OutputState
from docrerank.core.runtime import format_table


@dataclass
class Books:
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
        return not self.problems

    def to_dict(self) -> dict:
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


def summary_table(b: Books) -> str:
    """The table a person reads at the end of the job."""
    rows = [
        ["inputs", b.inputs, b.pages_expected],
        ["written", b.documents_written, b.pages_written],
        ["  complete", b.documents_complete, ""],
        ["quarantined", sum(b.documents_quarantined.values()), sum(b.pages_quarantined.values())],
    ]
    reasons = sorted(set(b.documents_quarantined) | set(b.pages_quarantined))
    for r in reasons:
        rows.append([f"  {r}", b.documents_quarantined.get(r, "") or "", b.pages_quarantined.get(r, "") or ""])
    rows.append(["books balance", "yes" if b.balanced else "NO", ""])
    return format_table(["", "documents", "pages"], rows)
