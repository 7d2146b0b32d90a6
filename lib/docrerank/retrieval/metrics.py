"""Retrieval metrics with one tie rule, and a paired significance test.

Runs are ``{query_id: {corpus_id: score}}``, qrels ``{query_id: {corpus_id: relevance}}``. Rankings follow
:func:`order`: score descending, then corpus id ascending. That is THE tie rule of the project; rerankers often
produce equal scores (bf16 logits, BM25 on near-identical pages), and a metric must not depend on dict order
or on a library's own tie-breaking.

Why own code rather than ranx: ranx compiles its metrics with numba on first use. Measured here (2 CPU cores):
the first ``ranx.evaluate`` of the six default metrics with a cold numba cache takes ~31 s (~60 s on a busy
machine; 3.7 s once numba's on-disk cache is warm), and that cache lives next to the installed package, so
every fresh image, worker node or read-only venv pays it again. The six metrics we report are a few lines
each in plain Python, exact and instant; the tests check them against hand-computed values and cross-check
them against ranx (fed rank-derived scores, so that its tie-breaking cannot differ from ours).

Definitions (trec_eval / pytrec_eval / ranx conventions, which MTEB and ViDoRe use):

- relevant: relevance >= 1; graded relevance is the gain (linear gain, not 2**rel - 1).
- ``ndcg@k``: sum over ranks i <= k of rel_i / log2(i + 1), divided by the same sum over the ideal ranking.
- ``recall@k``: relevant documents in the top k / all relevant documents of the query.
- ``precision@k``: relevant documents in the top k / k.
- ``mrr@k``: 1 / rank of the first relevant document within the top k, else 0.
- ``map@k``: sum of precision@i at each relevant rank i <= k / all relevant documents of the query.
- without ``@k`` the cutoff is the whole ranking.

Queries are those of the qrels with at least one relevant document; a query missing from the run scores 0 on
every metric (it is not dropped), and run queries absent from the qrels are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

DEFAULT_METRICS = ["ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10", "mrr@10"]
KNOWN_METRICS = ("ndcg", "recall", "precision", "mrr", "map")


def order(scores: Mapping[str, float]) -> list[str]:
    """Corpus ids ranked by score descending, then id ascending (the project's tie rule)."""
    for doc, s in scores.items():
        if math.isnan(s):
            raise ValueError(f"score of {doc!r} is NaN; a ranking needs comparable scores")
    return sorted(scores, key=lambda d: (-scores[d], d))


def parse_metric(metric: str) -> tuple[str, int | None]:
    """``"ndcg@5"`` -> ``("ndcg", 5)``; ``"mrr"`` -> ``("mrr", None)``. ValueError for anything else."""
    name, _, cut = metric.strip().lower().partition("@")
    if name not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(KNOWN_METRICS)}, optionally with @k")
    if not cut:
        return name, None
    if not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"metric {metric!r}: the cutoff after '@' must be a positive integer")
    return name, int(cut)


def _score(name: str, k: int | None, ranking: list[str], rels: dict[str, int]) -> float:
    top = ranking if k is None else ranking[:k]
    n_rel = len(rels)
    if name == "ndcg":
        dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
        ideal = sorted(rels.values(), reverse=True)[:k]  # k None: every relevant document (trec_eval)
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        return dcg / idcg if idcg > 0 else 0.0
    if name == "recall":
        return sum(1 for d in top if d in rels) / n_rel
    if name == "precision":
        denom = k if k is not None else len(ranking)
        return sum(1 for d in top if d in rels) / denom if denom else 0.0
    if name == "mrr":
        return next((1.0 / (i + 1) for i, d in enumerate(top) if d in rels), 0.0)
    if name == "map":
        hits, total = 0, 0.0
        for i, d in enumerate(top):
            if d in rels:
                hits += 1
                total += hits / (i + 1)
        return total / n_rel
    raise AssertionError(name)


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: list[str] | tuple[str, ...] = tuple(DEFAULT_METRICS),
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score ``run`` against ``qrels``.

    Returns ``(means, per_query)``: ``means[metric]`` is the mean over the evaluated queries and
    ``per_query[metric][query_id]`` the value of each query (what :func:`paired_test` takes). Evaluated queries
    are the qrels queries with at least one relevant document; those missing from the run score 0.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    parsed = [(m, *parse_metric(m)) for m in metrics]
    positives = {q: {d: int(r) for d, r in judged.items() if r >= 1} for q, judged in qrels.items()}
    positives = {q: r for q, r in positives.items() if r}
    per_query: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for q in sorted(positives):
        ranking = order(run.get(q, {}))
        for m, name, k in parsed:
            per_query[m][q] = _score(name, k, ranking, positives[q])
    n = len(positives)
    means = {m: (sum(per_query[m].values()) / n if n else 0.0) for m in metrics}
    return means, per_query


def paired_test(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 10000, seed: int = 0) -> dict:
    """Paired significance of system ``b`` vs system ``a`` on the same queries (per-query values of one metric).

    Two-sided paired randomization test: under the null hypothesis each per-query difference is as likely
    negated, so the p-value is the share of random sign flips whose |mean difference| reaches the observed one
    (exact enumeration when 2**n <= n_resamples, else ``n_resamples`` seeded draws, counted with the +1
    correction). Also a paired t-test (scipy). Returns ``{"n", "mean_a", "mean_b", "delta", "p_randomization",
    "p_ttest"}`` with ``delta = mean_b - mean_a``; identical inputs give delta 0 and both p-values 1.
    """
    import numpy as np

    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"paired_test needs the same queries for both systems; only in a: {only_a[:5]}, "
                         f"only in b: {only_b[:5]}")
    if not a:
        raise ValueError("paired_test needs at least one query")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    qids = sorted(a)
    va = np.array([float(a[q]) for q in qids])
    vb = np.array([float(b[q]) for q in qids])
    diff = vb - va
    n = len(qids)
    observed = abs(diff.mean())
    tol = 1e-12 * max(1.0, observed)  # float noise must not turn an equal statistic into a smaller one
    if 2 ** n <= n_resamples:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        p_rand = float((np.abs(signs @ diff / n) >= observed - tol).mean())
    else:
        rng = np.random.default_rng(seed)
        hits, left = 0, n_resamples
        while left:  # chunks keep memory flat for large query sets
            m = min(left, max(1, 2_000_000 // n))
            signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
            hits += int((np.abs(signs @ diff / n) >= observed - tol).sum())
            left -= m
        p_rand = (hits + 1) / (n_resamples + 1)
    if np.allclose(diff, diff[0]):  # constant differences: t is 0/0 (identical) or infinite
        p_t = 1.0 if diff[0] == 0 else 0.0
    else:
        from scipy import stats

        p_t = float(stats.ttest_rel(vb, va).pvalue)
    return {"n": n, "mean_a": float(va.mean()), "mean_b": float(vb.mean()), "delta": float(diff.mean()),
            "p_randomization": float(min(1.0, p_rand)), "p_ttest": p_t}
