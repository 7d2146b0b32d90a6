"""Document-mined hard negatives, the pure logic (no Ray): sampling, selection, the false-negative rule, rows.

For every kept positive of a build (or a given query-page set) the retriever returns the top ``top_n`` pages of
the same corpus; the positive page is dropped, the rest are put in a seeded order (``Random(f"{seed}|{query_id}")``,
so results do not depend on batching) and the first ``k`` that the false-negative filter lets through become the
group's negatives. The filter judges a mined page with the build's two verify prompts (or the text-layer judge);
a page that answers the query is a false negative: it is removed, counted and replaced by the next candidate.
The judging itself (two prompts or the text judge, the decision rule) is ``engines.verify``, shared with the build.

Splits: the build holds out documents (``is_heldout``). A training query is mined from training documents only
and a held-out query from held-out documents only, so no held-out page ever trains the reranker.
The Ray Data stages are in ``mine.stages``, the driver ``run_mine`` in ``mine.run``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from docrerank.core.schema import mined_group_id
from docrerank.engines.verify import answerable


SPLITS = {"train": "mined", "heldout": "mined_heldout"}
NOT_SEARCHED = ("heldout_not_mined", "no_query_text", "page_not_found")


def seeded_order(candidates: list[str], seed: int, query_id: str) -> list[str]:
    """The candidates in the query's seeded random order (independent of batching and of other queries)."""
    out = list(candidates)
    random.Random(f"{seed}|{query_id}").shuffle(out)
    return out


def candidates_of(run: dict[str, float], positive: str, top_n: int) -> tuple[list[str], int | None]:
    """(retrieved pages but the positive, in rank order; the positive's 1-based rank or None) from a top-N run."""
    from docrerank.retrieval.metrics import order

    ranked = order(run)[:top_n]
    rank = ranked.index(positive) + 1 if positive in ranked else None
    return [p for p in ranked if p != positive], rank


Judge = Callable[[list[tuple[dict, str]]], list[tuple[float | None, float | None, str | None]]]


def select_negatives(queries: list[dict], k: int, judge: Judge | None, threshold: float = 0.5,
                     rule: str = "either") -> None:
    """Fill each query's ``negatives``: the first ``k`` pages of its ``order`` that the judge lets through.

    Rounds: every query sends its next (k - accepted) candidates to one batched ``judge`` call, until it has k or
    runs out, so a page is judged only when it could be used. Sets ``false_negatives``, ``judged`` {page: [a, b]}
    and ``judge_errors`` (a page the judge failed on is not used)."""
    for q in queries:
        q.update(negatives=[], false_negatives=[], judged={}, judge_errors=0)
        if judge is None:
            q["negatives"] = q["order"][:k]
    if judge is None:
        return
    nxt = {q["query_id"]: 0 for q in queries}
    while True:
        jobs = []
        for q in queries:
            i, need = nxt[q["query_id"]], k - len(q["negatives"])
            take = q["order"][i:i + need] if need > 0 else []
            nxt[q["query_id"]] = i + len(take)
            jobs += [(q, p) for p in take]
        if not jobs:
            return
        for (q, p), (a, b, err) in zip(jobs, judge(jobs)):
            if err:
                q["judge_errors"] += 1
                continue
            q["judged"][p] = [round(a, 4), round(b, 4)]
            (q["false_negatives"] if answerable(a, b, threshold, rule) else q["negatives"]).append(p)


def finish_status(q: dict, k: int, min_negatives: int) -> None:
    """Set ``status`` and ``reason`` of a mined query from its negatives."""
    n = len(q["negatives"])
    why = "false_negatives" if q["false_negatives"] else "judge_errors" if q["judge_errors"] else "few_candidates"
    if not q["candidates"]:
        q["status"], q["reason"] = "skipped", "no_candidates"
    elif n >= k:
        q["status"], q["reason"] = "complete", None
    elif n >= min_negatives:
        q["status"], q["reason"] = "short", why
    else:
        q["status"], q["reason"] = "skipped", f"too_few_negatives:{why}"


def status_schema():
    """mining_status: one row per input query."""
    import pyarrow as pa

    return pa.schema([
        ("query_id", pa.string()), ("page_id", pa.string()), ("query", pa.string()), ("split", pa.string()),
        ("status", pa.string()),  # complete | short | skipped
        ("reason", pa.string()),  # why short or skipped
        ("retrieved", pa.int32()),  # pages the retriever returned (<= top_n)
        ("positive_rank", pa.int32()),  # 1-based rank of the positive among them, null when not retrieved
        ("candidates", pa.int32()), ("negatives", pa.list_(pa.string())),
        ("false_negatives", pa.list_(pa.string())), ("judge_errors", pa.int32()),
        ("judgements", pa.string()),  # JSON {page_id: [p_a, p_b]} of every judged page
    ])


def group_rows(q: dict, pages: dict[str, dict]) -> list[dict]:
    """Example rows (``examples_schema()``) of a mined query's group: its positive, then its negatives."""
    gid = mined_group_id(q["query_id"])
    rows = []
    for p, label in [(q["page_id"], 1)] + [(n, 0) for n in q["negatives"]]:
        pg = pages[p]
        rows.append({"group_id": gid, "query": q["text"], "page_id": p, "image": pg["image"],
                     "image_format": pg["image_format"], "text": pg["text"], "label": label,
                     "kind": "positive" if label else "mined", "attribute": None})
    return rows


def status_row(q: dict, split: str) -> dict:
    """The mining_status row (``status_schema()``) of a query."""
    return {"query_id": q["query_id"], "page_id": q["page_id"], "query": q["text"], "split": split,
            "status": q["status"], "reason": q["reason"], "retrieved": q["retrieved"],
            "positive_rank": q["positive_rank"], "candidates": len(q["candidates"]),
            "negatives": q["negatives"], "false_negatives": q["false_negatives"],
            "judge_errors": q["judge_errors"], "judgements": json.dumps(q["judged"])}
