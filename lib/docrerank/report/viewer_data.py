"""What the viewer shows, read from a build output: one record per finished page (its positives, and under each
every negative candidate with its attribute, both verifier scores, verdict and reason, kept ones first), in shards
of a few hundred pages, with per-shard counts so that a filter can skip shards that hold nothing it matches.

Reads ``pages/`` (page metadata only; images are read by :mod:`docrerank.report.viewer` for the thumbnails),
``page_status/``, ``queries/`` and ``stats.json``; needs no Ray.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

from docrerank.core import storage

PAGE_COLUMNS = ["page_id", "doc_id", "source_uri", "page_number", "num_pages", "width", "height"]
QUERY_COLUMNS = ["query_id", "page_id", "text", "role", "origin", "parent_id", "attribute", "answer",
                 "p_answerable_a", "p_answerable_b", "verdict", "reason", "model"]
# Order of negatives under a positive: kept first, then verified but not selected, then the rejected ones.
_REASON_ORDER = {"selected": 0, "not_selected": 1}


@dataclass
class BuildTables:
    """The tables of a build output the viewer needs (Arrow tables; ``queries`` sorted by page)."""

    pages: dict  # page_id -> page metadata row
    pages_loc: storage.Location  # the pages table the build read (``<output>/pages/`` or its ``pages=``)
    status: dict  # page_id -> page_status row
    queries: Any  # pyarrow.Table sorted by page_id
    spans: dict  # page_id -> (start, end) rows of ``queries``
    stats: dict


def read_build(out: storage.Location) -> BuildTables:
    """Read a build output; raise ValueError when it is not one (no ``page_status/`` or ``queries/``)."""
    import pyarrow.compute as pc

    from docrerank.core.schema import page_status_schema, queries_schema

    for needed in ("page_status", "queries"):
        if not storage.exists(out.join(needed)):
            raise ValueError(f"{out.uri}: expected a jobs.build_dataset output, found no {needed}/")
    stats_loc = out.join("stats.json")
    stats = json.loads(storage.read_bytes(stats_loc)) if storage.exists(stats_loc) else {}
    pages_loc = pages_location(out, stats)
    status = {r["page_id"]: r for r in storage.read_parquet_dir(
        out.join("page_status"), columns=["page_id", "status", "positives_kept", "negatives_kept"],
        schema=page_status_schema()).to_pylist()}
    pages = {r["page_id"]: r for r in storage.read_parquet_dir(pages_loc, columns=PAGE_COLUMNS).to_pylist()
             if r["page_id"] in status}
    queries = storage.read_parquet_dir(out.join("queries"), columns=QUERY_COLUMNS, schema=queries_schema())
    queries = queries.take(pc.sort_indices(queries, [("page_id", "ascending")]))
    spans: dict = {}
    ids = queries.column("page_id").to_pylist()
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            spans[ids[start]] = (start, i)
            start = i
    return BuildTables(pages, pages_loc, status, queries, spans, stats)


def pages_location(out: storage.Location, stats: dict) -> storage.Location:
    """The pages table of the build output ``out``: the one its stats.json records (a build from ``pages=`` reads
    a table outside its output), else ``<output>/pages/``; ValueError naming both when neither is there."""
    recorded = (stats.get("sources") or {}).get("pages")
    for loc in ([storage.resolve(recorded)] if recorded else []) + [out.join("pages")]:
        if storage.exists(loc):
            return loc
    raise ValueError(f"{out.uri}: the pages table of this build is not found (stats.json names "
                     f"{recorded or 'none'}; no {out.uri}/pages/ either)")


def page_order(tables: BuildTables) -> list[str]:
    """Finished pages in reading order: by source file, then page number (pages missing from pages/ last)."""
    def key(pid: str):
        p = tables.pages.get(pid)
        return (0, p["source_uri"] or "", p["page_number"] or 0) if p else (1, pid, 0)

    return sorted(tables.status, key=key)


def _score(v) -> float | None:
    return None if v is None else round(float(v), 3)


def _query(r: dict) -> dict:
    out = {"text": r["text"], "origin": r["origin"], "pa": _score(r["p_answerable_a"]), "pb": _score(r["p_answerable_b"]),
           "verdict": r["verdict"], "reason": r["reason"]}
    if r["role"] == "negative":
        out["attribute"] = r["attribute"] or "general"
    elif r.get("answer"):
        out["answer"] = r["answer"]
    return out


def _negative_key(n: dict):
    return (n["verdict"] != "kept", _REASON_ORDER.get(n["reason"], 2), n["reason"] or "", n["attribute"], n["text"])


def page_record(tables: BuildTables, page_id: str, thumb: str | None) -> dict:
    """The viewer's record of one page: metadata, status, positives (kept first) each with its negatives."""
    p = tables.pages.get(page_id) or {}
    s = tables.status[page_id]
    start, end = tables.spans.get(page_id, (0, 0))
    rows = tables.queries.slice(start, end - start).to_pylist()
    positives = {r["query_id"]: {**_query(r), "negatives": []} for r in rows if r["role"] == "positive"}
    orphans = []
    for r in rows:
        if r["role"] != "negative":
            continue
        parent = positives.get(r["parent_id"])
        (parent["negatives"] if parent is not None else orphans).append(_query(r))
    for pos in positives.values():
        pos["negatives"].sort(key=_negative_key)
    ordered = sorted(positives.values(), key=lambda q: (q["verdict"] != "kept", q["text"]))
    source = p.get("source_uri") or ""
    return {
        "id": page_id, "doc": source.rsplit("/", 1)[-1], "source": source, "page": p.get("page_number"),
        "pages": p.get("num_pages"), "status": s["status"], "thumb": thumb,
        "positives": ordered, "orphans": sorted(orphans, key=_negative_key),
    }


def facet_keys(record: dict) -> Counter:
    """Counts of what a page holds, for the filters: ``neg|<attribute>|<verdict>|<reason>`` per negative and
    ``status|<status>`` once."""
    c: Counter = Counter({f"status|{record['status']}": 1})
    for pos in record["positives"]:
        for n in pos["negatives"]:
            c[f"neg|{n['attribute']}|{n['verdict']}|{n['reason'] or ''}"] += 1
    for n in record["orphans"]:
        c[f"neg|{n['attribute']}|{n['verdict']}|{n['reason'] or ''}"] += 1
    return c


def shards(order: list[str], per_shard: int) -> Iterator[tuple[int, list[str]]]:
    """``(shard index, page ids)`` in reading order, ``per_shard`` pages each."""
    for i in range(0, len(order), per_shard):
        yield i // per_shard, order[i:i + per_shard]


def funnel(stats: dict) -> list[list]:
    """The build's funnel as (label, count) rows, as the job prints it (empty when stats.json is missing)."""
    if not stats.get("pages"):
        return []
    p, n, pg = stats.get("positives", {}), stats.get("negatives", {}), stats["pages"]
    return [
        ["pages processed", pg.get("processed", 0)], ["  complete (k negatives)", pg.get("complete", 0)],
        ["  incomplete (fewer)", pg.get("incomplete", 0)], ["  no positive kept", pg.get("no_positive", 0)],
        ["positive candidates", p.get("candidates", 0)], ["positives kept", p.get("kept", 0)],
        ["negative candidates", n.get("candidates", 0)], ["  after dedup", n.get("after_dedup", 0)],
        ["  verified not answerable", n.get("verified", 0)], ["  kept (selected)", n.get("kept", 0)],
        ["training groups", stats.get("groups", 0)], ["  held out (not for training)", stats.get("heldout_groups", 0)],
    ]
