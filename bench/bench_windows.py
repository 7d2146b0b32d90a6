"""Long pages in the text backbone: windows (MaxP) vs truncation, the same trained cross-encoder scoring BM25's top
20 of real questions on real pages (``experiments/twins.py``'s test half of ``../shared/data/qa_dev``).

    python bench/bench_windows.py --reranker /tmp/twins/train_base-mix --bench /tmp/twins/bench_test [--windows 3]

``--bench``: a BEIR-layout benchmark with page text (the experiment writes ``<work>/bench_test``); ``--reranker``:
a text training output (repeatable). For each reranker, the pairs are scored with the page truncated to one window
(``max_windows=1``) and with up to ``--windows`` windows, in the same run. Writes
``bench/results/text_windows_ndcg_qa_dev.json`` (NDCG@5, truncation = baseline, windows = value; the first
reranker's, all of them under ``rerankers``) and ``bench/results/text_windows_pairs_per_s.json`` (reranked pairs
per second, same layout), with the pages' token lengths.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "lib")]

from common import write_result  # noqa: E402


def main() -> int:
    """Score both ways, write the two results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reranker", action="append", required=True, help="text training output (repeatable)")
    ap.add_argument("--bench", required=True, help="BEIR-layout benchmark with page text")
    ap.add_argument("--windows", type=int, default=3, help="max_windows of the windowed run")
    ap.add_argument("--top-k", type=int, default=20)
    args = ap.parse_args()
    import numpy as np
    import torch

    from docrerank.eval.beir import load_beir
    from docrerank.retrieval.metrics import evaluate
    from docrerank.retrieval.retrievers import retrieve
    from docrerank.eval.run import rerank_run
    from docrerank.models.reranker import Reranker

    torch.set_num_threads(2)
    bench = load_beir(args.bench, load_images=False)
    first = retrieve(bench, "bm25", args.top_k)
    base = evaluate(bench.qrels, first, ["ndcg@5"])[0]["ndcg@5"]
    rows = {}
    for path in args.reranker:
        out = {}
        for windows in (1, args.windows):
            rr = Reranker.load(path, device="cpu", max_windows=windows)
            t0 = time.perf_counter()
            run, info = rerank_run(rr, bench, first, args.top_k)
            dt = time.perf_counter() - t0
            out[windows] = {"ndcg@5": evaluate(bench.qrels, run, ["ndcg@5"])[0]["ndcg@5"],
                            "pairs_per_s": info["pairs"] / dt, "pairs": info["pairs"], "forwards": rr.forwards}
        rows[path] = out
        print(path, out)
    tok = Reranker.load(args.reranker[0], device="cpu").model[0]
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in bench.texts if t]
    pages = {"pages": len(lengths), "median_tokens": int(np.median(lengths)), "p90_tokens": int(np.percentile(lengths, 90))}
    common = {"queries": len(bench.qrels), "top_k": args.top_k, "windows": args.windows, "page_tokens": pages,
              "bm25_ndcg@5": round(base, 4), "rerankers": {p: {str(w): v for w, v in r.items()} for p, r in rows.items()}}
    first_r = rows[args.reranker[0]]
    write_result("text_windows_ndcg_qa_dev", "NDCG@5, BM25 top 20 reranked: windows (value) vs truncation (baseline)",
                 "ndcg@5", first_r[1]["ndcg@5"], first_r[args.windows]["ndcg@5"], **common)
    write_result("text_windows_pairs_per_s", "reranked pairs/s: windows (value) vs truncation (baseline)", "pairs/s",
                 first_r[1]["pairs_per_s"], first_r[args.windows]["pairs_per_s"], **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
