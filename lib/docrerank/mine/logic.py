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
from dataclasses import dataclass, field
from functools import cache
from typing import Literal, Optional

from docrerank.core.schema import mined_group_id
from docrerank.engines.verify import answerable

Split = Literal["train", "heldout"]
MineStatus = Literal["complete", "short", "skipped"]
SPLITS: dict[Split, str] = {"train": "mined", "heldout": "mined_heldout"}
NOT_SEARCHED = ("heldout_not_mined", "no_query_text", "page_not_found")


@dataclass
class MinedQuery:
    """What the mining stages know about one input positive (query, page): the mining job's typed state, carried
    between its stages as ``mined_query_type()`` (as the build carries ``core.schema.PageState``)."""

    query_id: str
    page_id: str
    text: str
    candidates: list[str] = field(default_factory=list)  # retrieved pages but the positive, in rank order
    order: list[str] = field(default_factory=list)  # the candidates in the query's seeded order
    retrieved: int = 0  # pages the retriever returned (<= top_n)
    positive_rank: Optional[int] = None  # 1-based rank of the positive among them, None when not retrieved
    negatives: list[str] = field(default_factory=list)
    false_negatives: list[str] = field(default_factory=list)
    judged: dict[str, tuple[float, float]] = field(default_factory=dict)  # page -> (p_a, p_b) of every judged page
    judge_errors: int = 0
    status: Optional[MineStatus] = None  # None until the query is finished
    reason: Optional[str] = None  # why short or skipped

    def skip(self, reason: str) -> None:
        """Finish the query as skipped, for ``reason``."""
        self.status, self.reason = "skipped", reason

    def to_arrow(self) -> dict:
        """A Python value of ``mined_query_type()``."""
        return {**{k: getattr(self, k) for k in _SCALARS},
                "judged": [{"page_id": p, "p_a": a, "p_b": b} for p, (a, b) in self.judged.items()]}

    @classmethod
    def from_arrow(cls, value: dict) -> "MinedQuery":
        """The query from a Python value of ``mined_query_type()`` (``to_arrow``'s inverse)."""
        judged = {j["page_id"]: (j["p_a"], j["p_b"]) for j in value.get("judged") or []}
        return cls(**{k: value[k] for k in _SCALARS}, judged=judged)


_SCALARS = ("query_id", "page_id", "text", "candidates", "order", "retrieved", "positive_rank", "negatives",
            "false_negatives", "judge_errors", "status", "reason")


@cache
def mined_query_type():
    """Arrow struct of a ``MinedQuery``."""
    import pyarrow as pa

    strings = pa.list_(pa.string())
    return pa.struct([
        ("query_id", pa.string()), ("page_id", pa.string()), ("text", pa.string()), ("candidates", strings),
        ("order", strings), ("retrieved", pa.int32()), ("positive_rank", pa.int32()), ("negatives", strings),
        ("false_negatives", strings), ("judge_errors", pa.int32()), ("status", pa.string()), ("reason", pa.string()),
        ("judged", pa.list_(pa.struct([("page_id", pa.string()), ("p_a", pa.float64()), ("p_b", pa.float64())]))),
    ])


def batches_to_arrow(batches: list[list[MinedQuery]]):
    """A ``list<mined_query_type()>`` array: one value per batch of queries (a dataset row's ``state``)."""
    import pyarrow as pa

    return pa.array([[q.to_arrow() for q in qs] for qs in batches], type=pa.list_(mined_query_type()))


def batches_from_arrow(column) -> list[list[MinedQuery]]:
    """The batches of queries of a ``batches_to_arrow`` array or chunked array."""
    return [[MinedQuery.from_arrow(v) for v in qs] for qs in column.to_pylist()]


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


Judge = Callable[[list[tuple[MinedQuery, str]]], list[tuple[float | None, float | None, str | None]]]


def select_negatives(queries: list[MinedQuery], k: int, judge: Judge | None, threshold: float = 0.5,
                     rule: str = "either") -> None:
    """Fill each query's ``negatives``: the first ``k`` pages of its ``order`` that the judge lets through.

    Rounds: every query sends its next (k - accepted) candidates to one batched ``judge`` call, until it has k or
    runs out, so a page is judged only when it could be used. Sets ``false_negatives``, ``judged`` {page: [a, b]}
    and ``judge_errors`` (a page the judge failed on is not used)."""
    for q in queries:
        q.negatives, q.false_negatives, q.judged, q.judge_errors = [], [], {}, 0
        if judge is None:
            q.negatives = q.order[:k]
    if judge is None:
        return
    nxt = {q.query_id: 0 for q in queries}
    while True:
        jobs = []
        for q in queries:
            i, need = nxt[q.query_id], k - len(q.negatives)
            take = q.order[i:i + need] if need > 0 else []
            nxt[q.query_id] = i + len(take)
            jobs += [(q, p) for p in take]
        if not jobs:
            return
        for (q, p), (a, b, err) in zip(jobs, judge(jobs)):
            if err or a is None or b is None:
                q.judge_errors += 1
                continue
            q.judged[p] = (round(a, 4), round(b, 4))
            (q.false_negatives if answerable(a, b, threshold, rule) else q.negatives).append(p)


def finish_status(q: MinedQuery, k: int, min_negatives: int) -> None:
    """Set ``status`` and ``reason`` of a mined query from its negatives."""
    n = len(q.negatives)
    why = "false_negatives" if q.false_negatives else "judge_errors" if q.judge_errors else "few_candidates"
    if not q.candidates:
        q.skip("no_candidates")
    elif n >= k:
        q.status, q.reason = "complete", None
    elif n >= min_negatives:
        q.status, q.reason = "short", why
    else:
        q.skip(f"too_few_negatives:{why}")


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


def group_rows(q: MinedQuery, pages: dict[str, dict]) -> list[dict]:
    """Example rows (``examples_schema()``) of a mined query's group: its positive, then its negatives."""
    gid = mined_group_id(q.query_id)
    rows = []
    for p, label in [(q.page_id, 1)] + [(n, 0) for n in q.negatives]:
        pg = pages[p]
        rows.append({"group_id": gid, "query": q.text, "page_id": p, "image": pg["image"],
                     "image_format": pg["image_format"], "text": pg["text"], "label": label,
                     "kind": "positive" if label else "mined", "attribute": None})
    return rows


def status_row(q: MinedQuery, split: Split) -> dict:
    """The mining_status row (``status_schema()``) of a query."""
    return {"query_id": q.query_id, "page_id": q.page_id, "query": q.text, "split": split,
            "status": q.status, "reason": q.reason, "retrieved": q.retrieved,
            "positive_rank": q.positive_rank, "candidates": len(q.candidates),
            "negatives": q.negatives, "false_negatives": q.false_negatives,
            "judge_errors": q.judge_errors, "judgements": json.dumps({p: list(ab) for p, ab in q.judged.items()})}
