"""Where the dataset build's pages and given positives come from, and the first stage that gives each page its state.

``load_given`` reads a positives file, ``query_pages_source`` turns a query-page set into page rows with their
queries as given positives, ``build_vocabulary`` collects the corpus vocabulary of the ``rules`` engine, and
``AttachState`` (the first stage of the pipeline) skips finished pages and attaches a ``PageState`` to the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging

from docrerank.build.stages import PAGE_COLUMNS
from docrerank.core import storage
from docrerank.core.schema import GivenPositive, PageState, given_type, page_id_of, states_to_arrow

log = logging.getLogger("docrerank.build")


def _given(question, answer) -> GivenPositive:
    return GivenPositive(str(question), None if answer is None else str(answer))


def read_positives(path: str) -> list[tuple[str, dict]]:
    """The rows of a positives file with where each is (``line N`` of JSONL, ``row N`` of Parquet); ValueError naming
    the file and the line of the first malformed row (not JSON, not an object, no ``question``, no page)."""
    import pyarrow.parquet as pq

    loc = storage.resolve(path)
    if loc.path.endswith(".parquet") or storage.is_dir(loc):
        table = storage.read_parquet_dir(loc) if storage.is_dir(loc) else pq.read_table(loc.path, filesystem=loc.fs)
        rows = [(f"row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)]
    else:
        rows = []
        for n, line in enumerate(storage.read_bytes(loc).decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"positives_file {path}, line {n}: not valid JSON ({e.msg} at column {e.colno})") \
                    from None
            rows.append((f"line {n}", row))
    for where, r in rows:
        if not isinstance(r, dict):
            raise ValueError(f"positives_file {path}, {where}: expected a JSON object, got {type(r).__name__}")
        if not isinstance(r.get("question"), str) or not r["question"].strip():
            raise ValueError(f"positives_file {path}, {where}: needs a non-empty 'question', got keys {sorted(r)}")
        if not r.get("page_id") and not (r.get("doc") and r.get("page_number") is not None):
            raise ValueError(f"positives_file {path}, {where}: needs 'page_id', or 'doc' and 'page_number'")
    return rows


def _name(uri) -> str:
    return str(uri or "").rsplit("/", 1)[-1]


def _page_number(n):
    try:
        return int(n)
    except (TypeError, ValueError):
        return n


def load_given(path: str, pages_loc: storage.Location) -> dict[str, list[GivenPositive]]:
    """Given positives by page id, from JSONL/Parquet rows with ``page_id`` or ``doc`` + ``page_number``.

    A question about a file the ingest quarantined as a ``duplicate`` of another is mapped to the same page of the
    copy kept (same bytes, same document id). Questions about pages the pages table does not have are left out and
    reported in one warning with the reason for each (file quarantined and why, no such page, unknown file) and
    the line of the first ones."""
    from docrerank.core.schema import page_id_of

    rows = read_positives(path)
    by_doc, docs, quarantined, dup_doc = {}, set(), {}, {}
    if any(not r.get("page_id") for _, r in rows):
        t = storage.read_parquet_dir(pages_loc, columns=["page_id", "source_uri", "page_number"])
        for pid, uri, n in zip(*(t.column(c).to_pylist() for c in ("page_id", "source_uri", "page_number"))):
            by_doc[(_name(uri), n)] = pid
            docs.add(_name(uri))
        quarantine = storage.resolve(pages_loc.uri.rstrip("/").rsplit("/", 1)[0]).join("quarantine")
        if storage.exists(quarantine):
            for q in storage.read_parquet_dir(quarantine).to_pylist():
                name = _name(q.get("source_uri"))
                if q.get("error") == "duplicate" and q.get("doc_id"):
                    dup_doc[name] = q["doc_id"]
                else:
                    quarantined.setdefault((name, q.get("page_number")), q.get("error"))
    known = set(by_doc.values())
    given: dict[str, list[GivenPositive]] = {}
    unmatched: list[tuple[str, str]] = []
    via_duplicate = 0
    for where, r in rows:
        pid = r.get("page_id")
        if not pid:
            name, n = _name(r.get("doc")), _page_number(r.get("page_number"))
            pid = by_doc.get((name, n))
            if pid is None and name in dup_doc and isinstance(n, int) and page_id_of(dup_doc[name], n) in known:
                pid = page_id_of(dup_doc[name], n)
                via_duplicate += 1
            if pid is None:
                why = quarantined.get((name, n)) or quarantined.get((name, None))
                reason = (f"{name} page {n} was quarantined ({why})" if why else
                          f"{name} has no page {n} in the pages table" if name in docs else
                          f"{name} is a duplicate whose copy has no page {n}" if name in dup_doc else
                          f"{name} is not in the pages table")
                unmatched.append((where, reason))
                continue
        given.setdefault(pid, []).append(_given(r["question"], r.get("answer")))
    if via_duplicate:
        log.info("positives_file: %d questions about files quarantined as duplicates go to the same pages of the "
                 "copy kept", via_duplicate)
    if unmatched:
        shown = "; ".join(f"{where}: {reason}" for where, reason in unmatched[:5])
        log.warning("positives_file %s: %d of %d questions are about pages the build does not have, left out: %s%s",
                    path, len(unmatched), len(rows), shown, " ..." if len(unmatched) > 5 else "")
    return given


def build_vocabulary(pages_loc: storage.Location, max_pages: int = 20_000) -> dict:
    """Corpus vocabulary for the rules engine, from the text layer of up to ``max_pages`` pages."""
    import pyarrow.parquet as pq

    from docrerank.lexical.spans import Vocabulary

    texts = []
    for f in storage.list_files(pages_loc, suffixes=(".parquet",)):
        texts += pq.read_table(f, columns=["text"], filesystem=pages_loc.fs).column("text").to_pylist()
        if len(texts) >= max_pages:
            break
    return Vocabulary.from_texts([t or "" for t in texts[:max_pages]]).to_dict()


def query_pages_source(batch: dict):
    """A query-page set -> page rows (page id from the image bytes) with its queries as given positives.

    Columns: ``image`` (bytes, or a struct with ``bytes`` as HF datasets write it), ``positive_queries`` /
    ``queries`` (list) or ``query`` (str), optional ``answer`` and ``text`` (a text layer, if the set has one).
    Returns a pyarrow table of ``PAGE_COLUMNS`` and ``given``.
    """
    import pyarrow as pa

    from docrerank.engines.messages import sniff_mime

    imgs = list(batch["image"])
    queries = batch.get("positive_queries", batch.get("queries", batch.get("query")))
    answers = batch.get("answer")
    texts = batch.get("text")
    out = {k: [] for k in (*PAGE_COLUMNS, "given")}
    for i, img in enumerate(imgs):
        img = img["bytes"] if isinstance(img, dict) else bytes(img)
        qs = queries[i]
        qs = [qs] if isinstance(qs, str) else [str(q) for q in list(qs)]
        ans = answers[i] if answers is not None else None
        ans = [ans] if isinstance(ans, str) else (list(ans) if ans is not None else [])
        out["page_id"].append(page_id_of(hashlib.sha256(img).hexdigest()[:32], 1))
        out["image"].append(img)
        out["image_format"].append(sniff_mime(img).split("/")[-1])
        out["text"].append(str(texts[i]) if texts is not None and texts[i] is not None else "")
        out["given"].append([{"question": q, "answer": None if j >= len(ans) or ans[j] is None else str(ans[j])}
                             for j, q in enumerate(qs) if q])
    types = {"page_id": pa.string(), "image": pa.binary(), "image_format": pa.string(), "text": pa.string(),
             "given": given_type()}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in out.items()})


class AttachState:
    """First stage: source rows -> pipeline rows. Drops finished pages (and pages outside ``limit_ids``), keeps
    the page columns and adds each page's ``state`` with its given positives (an inline ``given`` column of a
    query-page set, else ``given`` by page id)."""

    batch_format = "pyarrow"

    def __init__(self, given: dict[str, list[GivenPositive]], done: set, limit_ids: set | None):
        self.given, self.done, self.limit_ids = given, done, limit_ids

    def __call__(self, t):
        import pyarrow as pa

        ids = t.column("page_id").to_pylist()
        keep = [i not in self.done and (self.limit_ids is None or i in self.limit_ids) for i in ids]
        t = t.filter(pa.array(keep, pa.bool_()))
        if "given" in t.column_names:
            given = [[GivenPositive(**g) for g in gs] for gs in t.column("given").to_pylist()]
        else:
            given = [list(self.given.get(i, [])) for i in t.column("page_id").to_pylist()]
        return t.select(PAGE_COLUMNS).append_column("state", states_to_arrow([PageState(given=g) for g in given]))
