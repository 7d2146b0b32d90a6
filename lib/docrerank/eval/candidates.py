"""A first stage's candidates as a table: what the training's ranking validation reads
(``data.ranking_validation.path``, ``train/validate.py``) to validate by NDCG@k on held-out queries cheaply.

One row per (query, candidate page) in first-stage order (``rank`` from 1, ``first_score``), plus a row without a
rank for each relevant page the first stage missed (it counts in NDCG's ideal ranking):
``query_id``, ``query``, ``page_id``, ``text``, ``relevance``, ``rank``, ``first_score`` (and ``image``,
``image_format`` when asked, for a vlm).
"""

from __future__ import annotations

from typing import Any

from docrerank.core import storage
from docrerank.retrieval.metrics import order


def candidates_table(bench: Any, first: dict[str, dict[str, float]], top_k: int, with_images: bool = False):
    """The candidates of ``bench``'s queries (a ``Benchmark``) from the first-stage run ``first``."""
    import pyarrow as pa

    rows = []
    for q in sorted(bench.qrels):
        ranked = order(first.get(q, {}))[:top_k]
        rels = bench.qrels[q]
        for pid in ranked + sorted(p for p in rels if p not in ranked):
            page = bench.page(pid)
            rank = ranked.index(pid) + 1 if pid in ranked else None
            row = {"query_id": q, "query": bench.queries[q], "page_id": pid, "text": page["text"] or "",
                   "relevance": int(rels.get(pid, 0)), "rank": rank,
                   "first_score": float(first[q][pid]) if rank else None}
            if with_images:
                row.update(image=page["image"], image_format=page["image_format"])
            rows.append(row)
    fields = [("query_id", pa.string()), ("query", pa.string()), ("page_id", pa.string()), ("text", pa.string()),
              ("relevance", pa.int32()), ("rank", pa.int32()), ("first_score", pa.float64())]
    if with_images:
        fields += [("image", pa.binary()), ("image_format", pa.string())]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def write_candidates(spec: Any, output: str, top_k: int = 20, with_images: bool = False) -> dict:
    """Load a dataset (a ``DatasetSpec``), retrieve its queries' top ``top_k`` with BM25 and write the candidates
    to ``<output>/candidates.parquet``; returns counts."""
    from docrerank.eval.run import load_dataset
    from docrerank.retrieval.retrievers import retrieve

    bench = load_dataset(spec, load_images=with_images)
    first = retrieve(bench, "bm25", top_k)
    table = candidates_table(bench, first, top_k, with_images)
    out = storage.resolve(output)
    storage.makedirs(out)
    storage.write_table_atomic(out.join("candidates.parquet"), table)
    return {"queries": len(bench.qrels), "rows": table.num_rows, "pages": len(bench.corpus_ids),
            "path": out.join("candidates.parquet").uri}
