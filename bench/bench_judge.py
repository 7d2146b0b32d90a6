"""Judged (page, query) pairs per second: shared-page prefix reuse vs one full sequence per pair (hf engine, CPU).

Same random-weight Qwen2-VL-architecture model, same requests, same run: the baseline is the plain path
(every pair is its own sequence: image + instruction + query, batched), the value is the prefix-reuse path
(each page's image + instruction encoded once, only the queries run against its KV cache). Pages are
896x896 images, i.e. 802,816 pixels = 1024 image tokens after the 2x2 merge, as at the default render size.
Both paths are timed alternately ``--repeats`` times and the best time of each is kept (the machine is
shared). Also checks that both paths give the same probabilities.

    python bench/bench_judge.py            # writes bench/results/judge_prefix_reuse_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUERIES = [
    "What is the total revenue in {y}?", "Which segment grew fastest in {y}?", "How many employees were there in {y}?",
    "What was the net income of the cloud segment in {y}?", "Which platform is most used by Gen X women in {y}?",
    "What percentage of sales came from software in {y}?", "What dividend was paid per share in {y}?",
    "How much income tax did the company pay in {y}?", "Which region had the highest operating margin in {y}?",
    "What was the price of the stock at the end of {y}?", "How many acquisitions were completed in {y}?",
    "What is the ratio of debt to equity in {y}?",
]
PROMPT = "Can this page answer the question? Answer Yes or No.\nQuestion: {q}"


def make_page(seed: int, size: int = 896) -> bytes:
    """A synthetic document page: white background, dark text-like bars, a grey figure block (PNG bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.full((size, size, 3), 255, dtype=np.uint8)
    for y in range(40, size - 40, 22):
        x0, x1 = 40, int(rng.integers(size // 2, size - 40))
        a[y : y + 10, x0:x1] = rng.integers(0, 80)
    y0, x0 = int(rng.integers(100, size // 2)), int(rng.integers(60, size // 2))
    a[y0 : y0 + 200, x0 : x0 + 300] = rng.integers(100, 200, (200, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def build_requests(pages: list, per_page: int):
    from docrerank.engines import JudgeRequest, user

    reqs = []
    for p, page in enumerate(pages):
        for k in range(per_page):
            q = QUERIES[k % len(QUERIES)].format(y=2000 + k + 10 * p)
            reqs.append(JudgeRequest([user(page, PROMPT.format(q=q))], id=f"{p}-{k}"))
    return reqs


def timed(engine, reqs, prefix_reuse: bool):
    engine.cfg.hf.prefix_reuse = prefix_reuse
    t = time.perf_counter()
    res = engine.judge(reqs)
    return time.perf_counter() - t, res


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=2, help="pages per setting")
    ap.add_argument("--queries", type=int, nargs="+", default=[12, 24], help="queries per page (settings)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timed runs per path; best is kept")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (both paths)")
    ap.add_argument("--hidden", type=int, default=256, help="language model width")
    ap.add_argument("--layers", type=int, default=4, help="language model layers")
    ap.add_argument("--out", default="bench/results/judge_prefix_reuse_cpu.json")
    args = ap.parse_args(argv)

    import torch

    from docrerank.engines import EngineConfig, build_engine
    from docrerank.models.tiny import make_tiny_qwen2_vl

    tmp = tempfile.mkdtemp(prefix="bench_judge_")
    dims = dict(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64, num_kv_heads=2,
                vision_embed_dim=64, vision_depth=2, vision_heads=2)
    model_dir = make_tiny_qwen2_vl(Path(tmp) / "qwen2vl", **dims)
    cfg = EngineConfig(backend="hf", model=str(model_dir), batch_size=args.batch_size, max_pixels=802_816,
                       hf={"device": "cpu", "local_files_only": True})
    engine = build_engine(cfg)
    pages = [make_page(s) for s in range(args.pages)]

    warm = build_requests(pages[:1], 4)  # same code paths and image sizes, not timed
    timed(engine, warm, True)
    timed(engine, warm, False)

    settings = {}
    for per_page in args.queries:
        reqs = build_requests(pages, per_page)
        best = {True: float("inf"), False: float("inf")}
        results = {}
        for _ in range(args.repeats):
            for reuse in (True, False):
                secs, res = timed(engine, reqs, reuse)
                best[reuse] = min(best[reuse], secs)
                results[reuse] = res
        errors = [r.error for rs in results.values() for r in rs if r.error]
        if errors:
            raise SystemExit(f"judge errors: {errors[:3]}")
        diff = max(abs(a.p_yes - b.p_yes) for a, b in zip(results[True], results[False]))
        n = len(reqs)
        settings[str(per_page)] = {
            "pairs": n,
            "baseline_pairs_per_s": n / best[False],
            "value_pairs_per_s": n / best[True],
            "ratio": best[False] / best[True],
            "baseline_s": best[False],
            "value_s": best[True],
            "max_abs_diff_p_yes": diff,
            "prompt_tokens_per_pair": results[True][0].prompt_tokens,
        }
        s = settings[str(per_page)]
        print(f"{per_page:>2} queries/page: baseline {s['baseline_pairs_per_s']:.2f} pairs/s, "
              f"prefix reuse {s['value_pairs_per_s']:.2f} pairs/s, ratio {s['ratio']:.2f}x, "
              f"max |dp| {diff:.1e}, {s['prompt_tokens_per_pair']} prompt tokens/pair")

    head = settings[str(args.queries[0])]
    out = {
        "metric": f"judged pairs per second, hf engine, {args.queries[0]} queries per page",
        "unit": "pairs/s",
        "baseline": round(head["baseline_pairs_per_s"], 3),
        "value": round(head["value_pairs_per_s"], 3),
        "ratio": round(head["ratio"], 2),
        "device": f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads",
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "date": dt.date.today().isoformat(),
        "baseline_desc": "plain path: every pair its own sequence (image + instruction + query), batched",
        "value_desc": "prefix reuse: page image + instruction encoded once per page, queries on its KV cache",
        "by_queries_per_page": settings,
        "model": {"arch": "Qwen2VLForConditionalGeneration (random weights)", **dims, "dtype": "float32"},
        "image": {"size": "896x896", "pixels": 896 * 896, "image_tokens": (896 // 28) ** 2},
        "pages": args.pages,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"baseline {out['baseline']} pairs/s, value {out['value']} pairs/s, ratio {out['ratio']}x -> {args.out}")
    return out


if __name__ == "__main__":
    main()
