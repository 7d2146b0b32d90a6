"""Validation by retrieval quality during training: NDCG@k of reranked held-out candidates, and the best step kept.

Pairwise accuracy on validation groups says whether the positive beats its own negatives; it does not say whether
the reranker still orders a first stage's candidates well, which is what it is for (and what fine-tuning on a few
hundred groups can destroy). ``RankingValidator`` scores a small ranking set (held-out queries, their candidate
pages, the relevant ones) with the model being trained, computes NDCG@k with the evaluation's definition (linear
gain, log2 discount, ties by page id), and keeps a CPU copy of the trainable weights of the best step; training
exports that copy instead of the last step's weights (``data.ranking_validation.keep_best``).

A ranking set comes from a candidates table (``docrerank.eval.candidates`` writes one from any benchmark and first
stage: the cheap way for large held-out sets) or from a dataset build's output: its held-out positives against
every page of the held-out documents of one ``part`` (a seeded hash of the document id splits the held-out
documents in two: ``validation`` for choices made on held-out data, ``test`` for reporting; ``part_of``).

torch is imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Optional

from docrerank.core import storage
from docrerank.core.schema import doc_of_page
from docrerank.data.collate import Batch
from docrerank.data.heldout import part_of, read_questions
from docrerank.train.config import RankingValidationConfig
from docrerank.train.dist import all_reduce, world
from docrerank.train.export import trainable_state

log = logging.getLogger("docrerank.train")

MAX_BUILD_PAIRS = 20_000  # build outputs are ranked in full (no first stage): beyond this, use a candidates table


@dataclass
class RankingSet:
    """Queries, each with its candidate pages in first-stage order, the relevant pages, and the pages' contents."""

    queries: dict[str, str]
    candidates: dict[str, list[str]]
    qrels: dict[str, dict[str, int]]
    texts: dict[str, str]
    images: dict[str, Optional[bytes]]

    @property
    def pairs(self) -> int:
        """(query, page) pairs to score."""
        return sum(len(c) for c in self.candidates.values())


def ndcg(ranking: list[str], rels: dict[str, int], k: int) -> float:
    """NDCG@k with trec_eval's definition (as ``docrerank.retrieval.metrics``): linear gain, log2 discount."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sum(r / math.log2(i + 2) for i, r in enumerate(sorted(rels.values(), reverse=True)[:k]))
    return dcg / ideal if ideal > 0 else 0.0


def rank_by(scores: dict[str, float]) -> list[str]:
    """Page ids by score descending, then id (the project's tie rule)."""
    return sorted(scores, key=lambda d: (-scores[d], d))


# ------------------------------------------------------------------------------------------- loading
def load_ranking_set(cfg: RankingValidationConfig, need_images: bool = False) -> RankingSet:
    """The ranking set of ``cfg.path`` (a candidates table or a build output), at most ``cfg.max_queries`` queries
    (a seeded sample); ValueError when it holds no query with a relevant candidate."""
    loc = storage.resolve(cfg.path)
    if any(storage.exists(loc.join(d)) for d in ("examples_heldout", "examples")):
        rset = _from_build(loc, cfg, need_images)
    else:
        rset = _from_candidates(loc, cfg, need_images)
    qids = sorted(q for q in rset.queries if rset.qrels.get(q) and rset.candidates.get(q))
    if not qids:
        raise ValueError(f"data.ranking_validation.path={cfg.path}: no query with a relevant page among its "
                         f"candidates (part={cfg.part})")
    if len(qids) > cfg.max_queries:
        qids = sorted(random.Random(cfg.seed).sample(qids, cfg.max_queries))
    return RankingSet({q: rset.queries[q] for q in qids}, {q: rset.candidates[q] for q in qids},
                      {q: rset.qrels[q] for q in qids}, rset.texts, rset.images)


def _from_candidates(loc: storage.Location, cfg: RankingValidationConfig, need_images: bool) -> RankingSet:
    import pyarrow.parquet as pq

    table = storage.read_parquet_dir(loc) if storage.is_dir(loc) else pq.read_table(loc.path, filesystem=loc.fs)
    missing = [c for c in ("query_id", "query", "page_id", "text", "relevance", "rank") if c not in table.column_names]
    if missing:
        raise ValueError(f"data.ranking_validation.path={cfg.path}: not a candidates table, missing {missing}")
    cols = ["query_id", "query", "page_id", "text", "relevance", "rank"] + (
        ["image"] if need_images and "image" in table.column_names else [])
    rows = table.select(cols).to_pylist()
    queries, qrels, texts, images, ranked = {}, {}, {}, {}, {}
    for r in rows:
        q, p = str(r["query_id"]), str(r["page_id"])
        queries[q] = r["query"] or ""
        texts[p] = r["text"] or ""
        images[p] = r.get("image")
        if (r["relevance"] or 0) > 0:
            qrels.setdefault(q, {})[p] = int(r["relevance"])
        if r["rank"] is not None:  # relevant pages the first stage missed have no rank: they only count in qrels
            ranked.setdefault(q, []).append((int(r["rank"]), p))
    candidates = {q: [p for _, p in sorted(v)][:cfg.top_k] for q, v in ranked.items()}
    return RankingSet(queries, candidates, qrels, texts, images)


def _from_build(loc: storage.Location, cfg: RankingValidationConfig, need_images: bool) -> RankingSet:
    import pyarrow.compute as pc

    held = loc.join("examples_heldout")
    if not storage.exists(held):
        raise ValueError(f"data.ranking_validation.path={cfg.path}: the build has no examples_heldout/ (set "
                         "holdout_fraction in the build)")
    ex = storage.read_parquet_dir(held, columns=["group_id", "query", "page_id", "label"])
    ex = ex.filter(pc.equal(ex.column("label"), 1))
    docs = {doc_of_page(p) for p in ex.column("page_id").to_pylist()}
    if cfg.part != "all":
        docs = {d for d in docs if part_of(d, cfg.seed) == cfg.part}
    pages_loc = loc.join("pages")
    if not storage.exists(pages_loc):
        stats = json.loads(storage.read_bytes(loc.join("stats.json"))) if storage.exists(loc.join("stats.json")) else {}
        src = (stats.get("sources") or {}).get("pages")
        if not src:
            raise ValueError(f"data.ranking_validation.path={cfg.path}: no pages/ and no sources.pages in stats.json")
        pages_loc = storage.resolve(src)
    texts, images, names = read_split_pages(pages_loc, docs, need_images)
    corpus = sorted(texts)
    queries, qrels = {}, {}
    if cfg.questions:
        queries, qrels = read_questions(cfg.questions, names)
    else:
        for gid, query, pid in zip(*(ex.column(c).to_pylist() for c in ("group_id", "query", "page_id"))):
            if pid in texts:
                queries[gid] = query
                qrels.setdefault(gid, {})[pid] = 1
    n_pairs = min(len(queries), cfg.max_queries) * len(corpus)
    if n_pairs > MAX_BUILD_PAIRS:
        raise ValueError(f"data.ranking_validation.path={cfg.path}: ranking every page of the part's documents "
                         f"means {n_pairs} pairs per validation (> {MAX_BUILD_PAIRS}); write a candidates table with a "
                         "first stage (docrerank.eval.candidates) or lower max_queries")
    return RankingSet(queries, {q: corpus for q in queries}, qrels, texts, images)


def read_split_pages(pages_loc: storage.Location, docs: set[str], need_images: bool = False
                     ) -> tuple[dict[str, str], dict[str, Optional[bytes]], dict[tuple[str, int], str]]:
    """Texts and images (when asked) of every page of ``docs`` in a pages table, and their ids by (file name,
    page number): the corpus of a split (the evaluation reads build splits the same way)."""
    import pyarrow.parquet as pq

    cols = ["page_id", "doc_id", "text", "source_uri", "page_number"] + (["image"] if need_images else [])
    texts, images, names = {}, {}, {}
    for f in storage.list_files(pages_loc, suffixes=(".parquet",)):
        t = pq.read_table(f, columns=cols, filesystem=pages_loc.fs, filters=[("doc_id", "in", sorted(docs))])
        for r in t.to_pylist():
            texts[r["page_id"]] = r["text"] or ""
            images[r["page_id"]] = r.get("image")
            names[(r["source_uri"].rsplit("/", 1)[-1], r["page_number"])] = r["page_id"]
    return texts, images, names


# ------------------------------------------------------------------------------------------ validating
class RankingValidator:
    """Called with the step number (on every worker): scores the ranking set, returns ``val_ndcg@k`` and the best
    step so far, and keeps the best step's trainable weights (a CPU copy, on rank 0) in ``best_state``."""

    def __init__(self, rset: RankingSet, scorer: Any, engine: Any, cfg: RankingValidationConfig, device: str):
        self.rset, self.scorer, self.engine, self.cfg, self.device = rset, scorer, engine, cfg, device
        self.key = f"val_ndcg@{cfg.k}"
        self.best_step: Optional[int] = None
        self.best_value = -1.0
        self.best_state: Optional[dict] = None
        self.done: set[int] = set()

    def _chunks(self, qids: list[str]) -> list[list[tuple[str, str]]]:
        pairs = [(q, p) for q in qids for p in self.rset.candidates[q]]
        n = self.cfg.batch_pairs
        return [pairs[i:i + n] for i in range(0, len(pairs), n)]

    def _batch(self, pairs: list[tuple[str, str]]) -> Batch:
        import torch

        pages: dict[str, int] = {}
        for _, p in pairs:
            pages.setdefault(p, len(pages))
        ids = list(pages)
        zeros = torch.zeros(len(pairs), dtype=torch.long)
        return Batch(queries=[self.rset.queries[q] for q, _ in pairs], page_of=[pages[p] for _, p in pairs],
                     page_ids=ids, images=[self.rset.images.get(p) for p in ids],
                     texts=[self.rset.texts.get(p, "") for p in ids], labels=zeros, group_index=zeros, seqs=[],
                     group_ids=[])

    def score(self) -> float:
        """Mean NDCG@k over the ranking set's queries with the current weights (queries split over workers; every
        worker runs as many forward passes, as ZeRO-3 needs)."""
        import torch

        rank, size = world()
        qids = sorted(self.rset.queries)
        mine = self._chunks(qids[rank::size])
        n_batches = max(len(self._chunks(qids[r::size])) for r in range(size))
        scores: dict[str, dict[str, float]] = {}
        self.engine.eval()
        with torch.no_grad():
            for i in range(n_batches):
                real = i < len(mine)
                pairs = mine[i] if real else self._chunks(qids)[0]
                inputs = self.scorer.encode(self._batch(pairs))
                out = self.engine(**{k: v.to(self.device) for k, v in inputs.items()}).float().cpu().tolist()
                if real:  # padding batches only keep the workers in step
                    for (q, p), s in zip(pairs, out):
                        scores.setdefault(q, {})[p] = s
        self.engine.train()
        total = sum(ndcg(rank_by(scores[q]), self.rset.qrels[q], self.cfg.k) for q in scores)
        total, n = all_reduce([total, float(len(scores))])
        return total / max(n, 1.0)

    def __call__(self, step: int) -> dict[str, Any]:
        value = self.score()
        self.done.add(step)
        if value > self.best_value:  # ties keep the earlier step: less training for the same quality
            self.best_value, self.best_step = value, step
            if self.cfg.keep_best:
                self.best_state = trainable_state(self.scorer)  # collective under ZeRO-3: every worker calls it
        return {self.key: value, "best_step": self.best_step, f"best_{self.key}": self.best_value}


def make_validator(cfg: Optional[RankingValidationConfig], scorer: Any, engine: Any, backbone: str,
                   device: str) -> Optional[RankingValidator]:
    """The validator of ``data.ranking_validation`` (None when unset); logs the set's size."""
    if cfg is None:
        return None
    rset = load_ranking_set(cfg, need_images=backbone == "vlm")
    log.info("ranking validation: %d queries, %d pairs, NDCG@%d", len(rset.queries), rset.pairs, cfg.k)
    return RankingValidator(rset, scorer, engine, cfg, device)


def final_ranking(validator: Optional[RankingValidator], last: int) -> dict[str, Any]:
    """The end of a run: the last step validated (unless it was) and the step whose weights are exported."""
    if validator is None:
        return {}
    out = validator(last) if last not in validator.done else {}
    exported = validator.best_step if validator.cfg.keep_best else last
    return {**out, "best_step": validator.best_step, f"best_{validator.key}": validator.best_value,
            "exported_step": exported}


def best_or_last(validator: Optional[RankingValidator], scorer: Any) -> Optional[dict]:
    """The weights to export: the best validated step's (kept on rank 0) or, without one, the current ones
    (collective under ZeRO-3: every worker calls it)."""
    if validator is not None and validator.cfg.keep_best and validator.best_step is not None:
        return validator.best_state if world()[0] == 0 else None
    return trainable_state(scorer)
