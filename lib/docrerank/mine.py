"""Document-mined hard negatives, the config and the pure logic (no Ray): sampling, selection, rules, rows.

For every kept positive of a build (or a given query-page set) the retriever returns the top ``top_n`` pages of
the same corpus; the positive page is dropped, the rest are put in a seeded order (``Random(f"{seed}|{query_id}")``,
so results do not depend on batching) and the first ``k`` that the false-negative filter lets through become the
group's negatives. The filter judges a mined page with the build's two verify prompts (or the text-layer judge);
a page that answers the query is a false negative: it is removed, counted and replaced by the next candidate.

Splits: the build holds out documents (``is_heldout``). A training query is mined from training documents only
and a held-out query from held-out documents only, so no held-out page ever trains the reranker.
The Ray Data stages are in ``mine_stages``, the driver ``run_mine`` in ``mine_run``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from docrerank.config import Config
from docrerank.engines.base import EngineConfig

SPLITS = {"train": "mined", "heldout": "mined_heldout"}
NOT_SEARCHED = ("heldout_not_mined", "no_query_text", "page_not_found")


class MineFilterConfig(Config):
    """The false-negative filter: is a mined page in fact an answer to the query?"""

    engine: Literal["none", "text"] | EngineConfig = "text"
    """``none``: keep every sampled page; ``text``: the model-free text-layer judge; or an engine config of a VLM
    judge (hf / vllm / http, as in the build's ``verify.engine``)."""
    prompt: str = "verify"
    """Prompt template with prompt_a and prompt_b (the build's verify prompts)."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """p(answerable) threshold of the two prompts (the build's 0.5 suits a VLM judge; the text judge scores a
    whole question by the share of its words on the page and needs more, e.g. 0.7, see mine_local.yaml)."""
    rule: Literal["either", "both"] = "either"
    """``either``: a page is removed when either prompt finds it answerable (the build's rule for negatives);
    ``both``: only when both do (the build's rule for positives; removes fewer pages)."""
    prefilter: Literal["none", "text"] = "text"
    """Before a model judge, remove pages whose text layer already shows them answerable (both text estimates
    >= threshold; no model call for them). Pages without text always go to the model."""


class ColPaliOptions(Config):
    """ColPali / ColQwen first stage (colpali-engine, GPU)."""

    model: str | None = None
    """colpali-engine checkpoint (path or hub id), e.g. ``vidore/colqwen2-v1.0``."""
    model_class: str | None = None
    """colpali-engine class when the name does not tell (``ColQwen2``, ``ColPali``, ...)."""
    device: str = "cuda"
    """Torch device of the index builder and the mining actors."""
    batch_size: int = Field(4, ge=1)
    """Pages or queries per forward pass."""
    num_gpus: float = Field(1.0, ge=0)
    """GPUs per mining actor and for the index build."""


class MineConfig(Config):
    """``jobs.mine_negatives``: document-mined negatives (retriever top-N, positive excluded, seeded sample of k)."""

    output: str
    """Output directory or URI (mined/, mined_heldout/, mining_status/, _index/, mining_stats.json); may be the
    build output itself."""
    input: str | None = None
    """A build output: pages/ and the kept positives of queries/ (or the positive rows of examples/ and
    examples_heldout/ when queries/ is absent); its _meta/build_dataset.json gives the held-out split."""
    pages: str | None = None
    """A pages table (directory of Parquet) instead of ``<input>/pages``."""
    queries: str | None = None
    """A query-page set instead of the build's positives: Parquet (file or directory) with ``page_id`` and
    ``query`` (or ``text``), optional ``query_id``."""
    retriever: Literal["bm25", "colpali"] = "bm25"
    """First stage: ``bm25`` over the page text layer (CPU) or ``colpali`` over page images (GPU)."""
    colpali: ColPaliOptions = Field(default_factory=ColPaliOptions)
    """ColPali options (retriever: colpali)."""
    top_n: int = Field(10, ge=2)
    """Pages retrieved per query; the positive is dropped from them (the paper: top 10)."""
    k: int = Field(3, ge=1)
    """Negatives per query (the paper: 3)."""
    min_negatives: int = Field(1, ge=1)
    """Queries left with fewer negatives are skipped (recorded); between this and k they are kept, short."""
    seed: int = 0
    """Seed of the sampling (each query's order comes from the seed and its query id)."""
    positive_weight: Literal["k", "one"] = "k"
    """Example weight of the positive: its number of negatives (the build's 3:1) or 1."""
    filter: MineFilterConfig = Field(default_factory=MineFilterConfig)
    """False-negative filter."""
    holdout_fraction: float | None = Field(None, ge=0, lt=1)
    """Share of documents held out; default: the build's (``<input>/_meta/build_dataset.json``), else 0."""
    holdout_seed: int | None = None
    """Seed of the held-out split; default: the build's seed, else 0."""
    heldout: Literal["mine", "skip"] = "mine"
    """Held-out queries: ``mine`` them among held-out pages into mined_heldout/, or ``skip`` them (recorded)."""
    queries_per_batch: int = Field(32, ge=1)
    """Queries per batch and output shard."""
    limit_queries: int | None = Field(None, ge=1)
    """Mine at most this many queries (the first by query id), for a quick look."""
    num_workers: int | None = Field(None, ge=1)
    """Mining actors; default: the cluster's CPUs (BM25) or 1 (ColPali)."""
    num_cpus: float = Field(0.5, gt=0)
    """CPUs per mining actor (small values leave room for Ray Data on a small machine)."""
    resume: bool = True
    """Skip shards finished by an earlier run with the same settings; false deletes this job's outputs first."""

    @model_validator(mode="after")
    def _check(self):
        if not (self.input or self.pages):
            raise ValueError("expected input (a build output) or pages (a pages table)")
        if not (self.input or self.queries):
            raise ValueError("expected input (a build output) or queries (a query-page Parquet set)")
        if self.retriever == "colpali" and not self.colpali.model:
            raise ValueError("retriever: 'colpali' needs colpali.model (a colpali-engine checkpoint)")
        if self.min_negatives > self.k:
            raise ValueError(f"min_negatives: got {self.min_negatives}, expected at most k={self.k}")
        return self


# --- pure logic ----------------------------------------------------------------------------------------


def group_id(query_id: str) -> str:
    """Stable id of a query's mined group."""
    return hashlib.sha256(f"{query_id}|mined".encode()).hexdigest()[:24]


def seeded_order(candidates: list[str], seed: int, query_id: str) -> list[str]:
    """The candidates in the query's seeded random order (independent of batching and of other queries)."""
    out = list(candidates)
    random.Random(f"{seed}|{query_id}").shuffle(out)
    return out


def candidates_of(run: dict[str, float], positive: str, top_n: int) -> tuple[list[str], int | None]:
    """(retrieved pages but the positive, in rank order; the positive's 1-based rank or None) from a top-N run."""
    from docrerank.eval.metrics import order

    ranked = order(run)[:top_n]
    rank = ranked.index(positive) + 1 if positive in ranked else None
    return [p for p in ranked if p != positive], rank


Judge = Callable[[list[tuple[dict, str]]], list[tuple[float | None, float | None, str | None]]]


def is_false_negative(a: float, b: float, threshold: float, rule: str) -> bool:
    """Whether a page judged (a, b) answers the query under ``rule`` (either / both prompts)."""
    return (a >= threshold or b >= threshold) if rule == "either" else (a >= threshold and b >= threshold)


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
            (q["false_negatives"] if is_false_negative(a, b, threshold, rule) else q["negatives"]).append(p)


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


def group_rows(q: dict, pages: dict[str, dict], positive_weight: str) -> list[dict]:
    """Example rows (``examples_schema()``) of a mined query's group: its positive, then its negatives."""
    gid, w = group_id(q["query_id"]), float(len(q["negatives"])) if positive_weight == "k" else 1.0
    rows = []
    for p, label in [(q["page_id"], 1)] + [(n, 0) for n in q["negatives"]]:
        pg = pages[p]
        rows.append({"group_id": gid, "query": q["text"], "page_id": p, "image": pg["image"],
                     "image_format": pg["image_format"], "text": pg["text"], "label": label,
                     "kind": "positive" if label else "mined", "weight": w if label else 1.0,
                     "attribute": None})
    return rows


def status_row(q: dict, split: str) -> dict:
    """The mining_status row (``status_schema()``) of a query."""
    return {"query_id": q["query_id"], "page_id": q["page_id"], "query": q["text"], "split": split,
            "status": q["status"], "reason": q["reason"], "retrieved": q["retrieved"],
            "positive_rank": q["positive_rank"], "candidates": len(q["candidates"]),
            "negatives": q["negatives"], "false_negatives": q["false_negatives"],
            "judge_errors": q["judge_errors"], "judgements": json.dumps(q["judged"])}
