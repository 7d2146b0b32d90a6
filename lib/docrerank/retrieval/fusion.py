"""Fusion of a reranker's scores with the first stage's, per query: what production rerankers often do, since a
lexical first stage and a neural reranker make different mistakes (an exact year or name vs a paraphrase).

Two methods over one query's candidates, ``weight`` = the reranker's share in [0, 1] (0: first stage only, 1: the
reranker only):

- ``interpolate``: ``weight * r + (1 - weight) * f`` on scores min-max normalised within the query's candidates
  (BM25 scores and logits live on different scales; a query whose candidates all score the same gets 0s);
- ``rrf`` (reciprocal rank fusion): ``weight / (k + rank_r) + (1 - weight) / (k + rank_f)``, ranks from 1 (the
  project's tie rule: score descending, then page id), ``k`` = 60 as in the original RRF paper.

The weight is a choice made on validation data (``choose_weight``), never on the data reported. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

METHODS = ("interpolate", "rrf")
DEFAULT_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


def _ranks(scores: Mapping[str, float]) -> dict[str, int]:
    return {d: i + 1 for i, d in enumerate(sorted(scores, key=lambda d: (-scores[d], d)))}


def _minmax(scores: Mapping[str, float]) -> dict[str, float]:
    lo, hi = min(scores.values()), max(scores.values())
    return {d: (s - lo) / (hi - lo) if hi > lo else 0.0 for d, s in scores.items()}


def fuse(first: Mapping[str, float], reranked: Mapping[str, float], weight: float, method: str = "interpolate",
         rrf_k: int = 60) -> dict[str, float]:
    """Fused scores of one query's candidates (the pages ``reranked`` scored; a page missing from ``first``
    counts as its lowest score)."""
    if method not in METHODS:
        raise ValueError(f"fusion method: got {method!r}, expected one of {list(METHODS)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight: expected a number in [0, 1] (the reranker's share), got {weight}")
    if not reranked:
        return {}
    floor = min(first.values(), default=0.0)
    f = {d: float(first.get(d, floor)) for d in reranked}
    if method == "rrf":
        rf, rr = _ranks(f), _ranks(reranked)
        return {d: weight / (rrf_k + rr[d]) + (1 - weight) / (rrf_k + rf[d]) for d in reranked}
    nf, nr = _minmax(f), _minmax(reranked)
    return {d: weight * nr[d] + (1 - weight) * nf[d] for d in reranked}


def fuse_run(first: Mapping[str, Mapping[str, float]], reranked: Mapping[str, Mapping[str, float]], weight: float,
             method: str = "interpolate", rrf_k: int = 60) -> dict[str, dict[str, float]]:
    """``fuse`` for every query of a reranked run ``{query: {page: score}}``."""
    return {q: fuse(first.get(q, {}), docs, weight, method, rrf_k) for q, docs in reranked.items()}


def choose_weight(first: Mapping[str, Mapping[str, float]], reranked: Mapping[str, Mapping[str, float]],
                  metric_of_run, weights: Sequence[float] = DEFAULT_WEIGHTS, method: str = "interpolate",
                  rrf_k: int = 60) -> tuple[float, dict[float, float]]:
    """The weight whose fused run scores best under ``metric_of_run(run) -> float`` (validation data), and every
    weight's value. Ties go to the first best weight in ``weights`` order."""
    if not weights:
        raise ValueError("fusion weights: expected at least one candidate weight, got none")
    values = {float(w): metric_of_run(fuse_run(first, reranked, float(w), method, rrf_k)) for w in weights}
    best = max(values.values())
    return next(w for w in values if values[w] == best), values
