"""The held-out split as training validation and evaluation both read it: its two parts (``part_of``: a seeded
hash of the document id splits the held-out documents into ``validation`` for choices and ``test`` for reporting)
and questions files (``read_questions``: the build's ``positives_file`` layout)."""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from docrerank.core import storage

PARTS = ("validation", "test")


def part_of(doc_id: str, seed: int = 0) -> str:
    """The part of a held-out document: ``validation`` or ``test`` (a seeded hash of its id, about half each)."""
    h = int(hashlib.sha256(f"part|{seed}|{doc_id}".encode()).hexdigest()[:8], 16)
    return PARTS[h % 2]


def read_questions(path: str, page_ids: dict[tuple[str, int], str]) -> tuple[dict[str, str], dict[str, dict]]:
    """Queries and qrels from a questions file (JSONL, the build's ``positives_file`` layout): rows with
    ``question`` and its page (``page_id``, or ``doc`` = file name + 1-based ``page_number``), optionally
    ``relevant``: every page that answers it (page ids or ``{doc, page_number}``). Rows of the same question are
    one query; its id is a hash of the text. ``page_ids`` maps (file name, page number) to page ids; pages not in
    it are skipped (another split's documents)."""
    def pid(item) -> Optional[str]:
        if isinstance(item, str):
            return item if item in known else None
        return page_ids.get((str(item.get("doc", "")).rsplit("/", 1)[-1], item.get("page_number")))

    known = set(page_ids.values())
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for line in storage.read_bytes(storage.resolve(path)).decode().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        text = row.get("question") or row.get("query")
        if not text:
            raise ValueError(f"questions file {path}: rows need a 'question', got keys {sorted(row)}")
        pages = [pid(x) for x in row.get("relevant") or [row.get("page_id") or row]]
        pages = [p for p in pages if p is not None]
        if pages:
            q = hashlib.sha256(text.encode()).hexdigest()[:16]
            queries[q] = text
            qrels.setdefault(q, {}).update({p: 1 for p in pages})
    return queries, qrels
