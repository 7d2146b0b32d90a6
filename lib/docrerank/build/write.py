"""The dataset build's outputs: the write stage (queries, examples, export, page status) and the stats."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

from docrerank.core import storage
from docrerank.core.schema import is_heldout
from docrerank.core.raydata import batch_rows as _batch_rows


def batch_rows(batch) -> list[dict]:
    """Rows of a Ray batch, whether a pyarrow Table or a dict of columns."""
    return batch.to_pylist() if hasattr(batch, "to_pylist") else _batch_rows(batch)


def page_tables(page: dict, state: dict, positive_weight: str, k: int) -> dict:
    """Rows of every output table for one finished page."""
    qs = state["queries"]
    for q in qs:  # anything still pending or verified-but-unselected ends rejected, with the reason
        if q["verdict"] in (None, "verified"):
            q["verdict"], q["reason"] = "rejected", q["reason"] or "not_reached"
    kept_pos = [q for q in qs if q["role"] == "positive" and q["verdict"] == "kept"]
    examples, export = [], {"positive_queries": [], "negative_queries": [], "answer": []}
    n_negs = 0
    for pos in kept_pos:
        parent_ids = {pos["query_id"], pos.get("parent_id")}
        negs = [q for q in qs if q["role"] == "negative" and q["verdict"] == "kept" and q["parent_id"] in parent_ids]
        n_negs += len(negs)
        base = {"group_id": pos["query_id"], "page_id": page["page_id"], "image": page["image"],
                "image_format": page["image_format"], "text": page["text"]}
        w = float(len(negs)) if positive_weight == "k" else 1.0
        examples.append(dict(base, query=pos["text"], label=1, kind="positive", weight=w, attribute=None))
        examples += [dict(base, query=n["text"], label=0, kind="generated", weight=1.0, attribute=n["attribute"]) for n in negs]
        export["positive_queries"].append(pos["text"])
        export["negative_queries"].append([n["text"] for n in negs])
        export["answer"].append(pos.get("answer") or "")
    if not kept_pos:
        status = "no_positive"
    elif all(sum(1 for q in qs if q["verdict"] == "kept" and q["role"] == "negative" and q["parent_id"] in
                 {p["query_id"], p.get("parent_id")}) >= k for p in kept_pos):
        status = "complete"
    else:
        status = "incomplete"
    return {
        "queries": qs,
        "examples": examples,
        "export": [dict(export, image=page["image"])] if kept_pos else [],
        "page_status": [{"page_id": page["page_id"], "status": status, "positives_kept": len(kept_pos),
                         "negatives_kept": n_negs, "metrics": json.dumps(state["metrics"]),
                         "errors": json.dumps(state.get("errors", []))}],
    }


class WriteStage:
    """Writes one shard of every output table per batch; emits one summary row per page."""

    def __init__(self, output: str, positive_weight: str, k: int, write_pages: bool, holdout_fraction: float = 0.0,
                 seed: int = 0):
        self.out = storage.resolve(output)
        self.positive_weight, self.k, self.write_pages = positive_weight, k, write_pages
        self.holdout_fraction, self.seed = holdout_fraction, seed

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa

        from docrerank.core import schema

        rows = batch_rows(batch)
        tables = defaultdict(list)
        for r in rows:
            for key, vals in page_tables(r, json.loads(r["state"]), self.positive_weight, self.k).items():
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
            page_rows = [{"page_id": r["page_id"], "doc_id": r["page_id"].split("-")[0], "source_uri": None,
                          "page_number": 1, "num_pages": 1, "width": None, "height": None, "dpi": None,
                          "image": r["image"], "image_format": r["image_format"], "text": r["text"]} for r in rows]
            out = {"pages": pa.Table.from_pylist(page_rows, schema=schema.pages_schema()), **out}
        name = "part-" + hashlib.sha1("\n".join(sorted(r["page_id"] for r in rows)).encode()).hexdigest()[:20] + ".parquet"
        from docrerank.build.run import _write_shards

        _write_shards(self.out, name, out)
        return {"page_id": [r["page_id"] for r in rows], "status": [s["status"] for s in tables["page_status"]]}


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
