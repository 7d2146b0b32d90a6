"""The dataset build's outputs: the write stage (queries, examples, export, page status), resume and the stats.

Each batch of pages becomes one shard of every table, named by its pages and written atomically, ``page_status``
last (``core.raydata.write_shards``): a page with a status row is finished, and shards of batches without one
(an interrupted run) are removed before a rerun (``core.raydata.remove_orphans``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

from docrerank.build.stages import Page, pages_of
from docrerank.core import storage
from docrerank.core.raydata import write_shards
from docrerank.core.schema import is_heldout

OUTPUT_TABLES = ("queries", "examples", "examples_heldout", "export", "page_status")
MARKER = "page_status"


def done_pages(out: storage.Location) -> set[str]:
    """Ids of the pages an earlier run finished (they have a page_status row)."""
    from docrerank.core.schema import page_status_schema

    t = storage.read_parquet_dir(out.join(MARKER), columns=["page_id"], schema=page_status_schema())
    return set(t.column("page_id").to_pylist())


def engine_failures(page: Page) -> list[str]:
    """The page's model requests that failed for the engine's sake (``engines.UNFINISHED_KINDS``: a dead or wedged
    engine, not the page): such a page is not finished, whatever its other requests gave."""
    from docrerank.engines.requests import UNFINISHED_KINDS, error_kind

    texts = list(page.state.errors) + [q.reason for q in page.state.queries
                                       if q.reason and q.reason.startswith("judge_error: ")]
    return [t for t in texts if ": " in t and error_kind(t.split(": ", 1)[1]) in UNFINISHED_KINDS]


UNFINISHED = "engine_failed"
"""The status the write stage reports (and never writes) for a page left unfinished by an engine failure."""


def page_tables(page: Page, k: int) -> dict:
    """Rows of every output table for one finished page."""
    st = page.state
    for q in st.queries:  # anything still pending or verified-but-unselected ends rejected, with the reason
        if q.verdict in (None, "verified"):
            q.judged("rejected", q.reason or "not_reached")
    kept_pos = st.of("positive", "kept")
    examples, export = [], {"positive_queries": [], "negative_queries": [], "answer": []}
    n_negs = 0
    for pos in kept_pos:
        negs = st.negatives_of(pos, "kept")
        n_negs += len(negs)
        base = {"group_id": pos.query_id, "page_id": page.page_id, "image": page.image,
                "image_format": page.image_format, "text": page.text}
        examples.append(dict(base, query=pos.text, label=1, kind="positive", attribute=None))
        examples += [dict(base, query=n.text, label=0, kind="generated", attribute=n.attribute) for n in negs]
        export["positive_queries"].append(pos.text)
        export["negative_queries"].append([n.text for n in negs])
        export["answer"].append(pos.answer or "")
    if not kept_pos:
        status = "no_positive"
    elif all(len(st.negatives_of(p, "kept")) >= k for p in kept_pos):
        status = "complete"
    else:
        status = "incomplete"
    return {
        "queries": [q.as_row() for q in st.queries],
        "examples": examples,
        "export": [dict(export, image=page.image)] if kept_pos else [],
        "page_status": [{"page_id": page.page_id, "status": status, "positives_kept": len(kept_pos),
                         "negatives_kept": n_negs, "metrics": json.dumps(st.metrics), "errors": json.dumps(st.errors)}],
    }


class WriteStage:
    """Last stage: writes one shard of every output table per batch; emits one summary row per page."""

    batch_format = "pyarrow"

    def __init__(self, output: str, k: int, write_pages: bool, holdout_fraction: float = 0.0, seed: int = 0):
        self.out = storage.resolve(output)
        self.k, self.write_pages = k, write_pages
        self.holdout_fraction, self.seed = holdout_fraction, seed

    def __call__(self, batch) -> dict:
        import pyarrow as pa

        from docrerank.core import schema

        all_pages = pages_of(batch)
        pages = [p for p in all_pages if not engine_failures(p)]  # the others stay unfinished: a rerun redoes them
        if not all_pages:  # a resumed run's batch of finished pages: nothing to write (no 0-row shards)
            return {"page_id": [], "status": []}
        tables = defaultdict(list)
        for p in pages:
            for key, vals in page_tables(p, self.k).items():
                tables[key] += vals
        schemas = {"queries": schema.queries_schema(), "examples": schema.examples_schema(),
                   "export": schema.export_schema(), "page_status": schema.page_status_schema()}
        held = [e for e in tables["examples"] if is_heldout(e["page_id"], self.holdout_fraction, self.seed)]
        if held:
            tables["examples"] = [e for e in tables["examples"] if not is_heldout(e["page_id"], self.holdout_fraction, self.seed)]
            tables["examples_heldout"] = held
            schemas["examples_heldout"] = schema.examples_schema()
        out = {k: pa.Table.from_pylist(tables[k], schema=s) for k, s in schemas.items()}
        if self.write_pages:
            page_rows = [{"page_id": p.page_id, "doc_id": p.page_id.split("-")[0], "source_uri": None,
                          "page_number": 1, "num_pages": 1, "width": None, "height": None, "dpi": None,
                          "image": p.image, "image_format": p.image_format, "text": p.text} for p in pages]
            out = {"pages": pa.Table.from_pylist(page_rows, schema=schema.pages_schema()), **out}
        if pages:
            name = "part-" + hashlib.sha1("\n".join(sorted(p.page_id for p in pages)).encode()).hexdigest()[:20] + ".parquet"
            write_shards(self.out, name, out, marker=MARKER)
        status = {p.page_id: s["status"] for p, s in zip(pages, tables["page_status"])}
        return {"page_id": [p.page_id for p in all_pages],
                "status": [status.get(p.page_id, UNFINISHED) for p in all_pages]}


def funnel_stats(out: storage.Location) -> dict:
    """The build's funnel, from the output itself (so it holds across resumed runs)."""
    from docrerank.core.schema import page_status_schema, queries_schema

    q = storage.read_parquet_dir(out.join("queries"), columns=["role", "origin", "attribute", "verdict", "reason"],
                                 schema=queries_schema()).to_pylist()
    ps = storage.read_parquet_dir(out.join("page_status"), schema=page_status_schema()).to_pylist()
    pos = [r for r in q if r["role"] == "positive"]
    neg = [r for r in q if r["role"] == "negative"]
    dedup_reasons = {"duplicate", "near_duplicate", "same_as_positive", "empty"}
    after_dedup = [r for r in neg if r["reason"] not in dedup_reasons]
    verified = [r for r in after_dedup if r["reason"] in ("selected", "not_selected", "positive_dropped")]
    per_attr = defaultdict(Counter)
    for r in neg:
        a = r["attribute"] or "unknown"
        per_attr[a]["candidates"] += 1
        per_attr[a]["after_dedup"] += r["reason"] not in dedup_reasons
        per_attr[a]["verified"] += r["reason"] in ("selected", "not_selected", "positive_dropped")
        per_attr[a]["kept"] += r["verdict"] == "kept"
    stage_totals = defaultdict(Counter)
    for p in ps:
        for stage, m in json.loads(p["metrics"]).items():
            stage_totals[stage].update({k: v for k, v in m.items() if isinstance(v, (int, float))})
    return {
        "pages": {"processed": len(ps), **Counter(p["status"] for p in ps)},
        "positives": {"candidates": len(pos), "kept": sum(r["verdict"] == "kept" for r in pos),
                      "by_origin": dict(Counter(r["origin"] for r in pos)),
                      "rejected_by_reason": dict(Counter(r["reason"] for r in pos if r["verdict"] == "rejected"))},
        "negatives": {"candidates": len(neg), "after_dedup": len(after_dedup), "verified": len(verified),
                      "kept": sum(r["verdict"] == "kept" for r in neg),
                      "rejected_by_reason": dict(Counter(r["reason"] for r in neg if r["verdict"] == "rejected"))},
        "by_attribute": {a: dict(c) for a, c in sorted(per_attr.items())},
        "groups": sum(p["positives_kept"] for p in ps),
        "heldout_groups": len(set(storage.read_parquet_dir(out.join("examples_heldout"), columns=["group_id"])
                                  .column("group_id").to_pylist())) if storage.exists(out.join("examples_heldout")) else 0,
        "examples": sum(p["positives_kept"] + p["negatives_kept"] for p in ps),
        "stages": {s: {k: round(v, 3) for k, v in c.items()} for s, c in stage_totals.items()},
    }
