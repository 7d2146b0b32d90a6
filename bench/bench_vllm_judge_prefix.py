"""The vllm engine's judge with vLLM's prefix caching on (the page image first, a page's requests sent together)
against prefix caching off, on a real ``vllm.LLM`` (vLLM's CPU build in CI's environment), at 12 and 24 questions
per page.

    python bench/bench_vllm_judge_prefix.py [--pages 2] [--questions 12 24] [--repeats 3]

A tiny random Qwen2-VL (hidden 128) judges ``--pages`` page images of 896x896 (1,024 image tokens, prompts of about
1,080 tokens), each with N questions. Both engines are built in this process one after the other (the same
checkpoint, the same requests; fresh page images per measurement, so nothing is cached from an earlier one);
``value`` is prefix caching on, ``baseline`` off, each the median of ``--repeats`` measurements (fresh images each);
p(yes) is checked equal between the two.
Writes bench/results/vllm_judge_prefix_caching_cpu.json.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def page(seed: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (896, 896), (255 - seed % 50, 255, 255))
    d = ImageDraw.Draw(img)
    for line in range(40):
        d.text((10, 10 + 21 * line), f"Page {seed}: revenue {2000 + line} was {seed * line % 97}.{line} bn", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def requests(first_page: int, pages: int, questions: int):
    from docrerank.engines import JudgeRequest, user

    return [JudgeRequest([user(page(first_page + p), f"Does this page answer: what was the revenue in {2000 + q}? "
                                                     "Answer Yes or No.")], id=f"{p}-{q}")
            for p in range(pages) for q in range(questions)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=2)
    ap.add_argument("--questions", type=int, nargs="+", default=[12, 24])
    ap.add_argument("--repeats", type=int, default=3, help="measurements per side and size (median kept)")
    args = ap.parse_args()

    from common import write_result

    from docrerank.engines import EngineConfig, build_engine
    from docrerank.models.tiny import make_tiny_qwen2_vl

    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-prefix-"))
    path = make_tiny_qwen2_vl(tmp / "m", hidden_size=128, max_pixels=896 * 896)
    results: dict = {}
    for caching in (True, False):
        cfg = EngineConfig(backend="vllm", model=str(path), dtype="float32", max_model_len=2048, max_pixels=896 * 896,
                           vllm={"enable_prefix_caching": caching, "kv_cache_gib": 0.5,
                                 "engine_kwargs": {"enforce_eager": True}})
        t0 = time.perf_counter()
        eng = build_engine(cfg)
        load_s = time.perf_counter() - t0
        eng.judge(requests(10_000, 1, 1))  # warm-up
        for i, n in enumerate(args.questions):
            times, p_yes = [], []
            for rep in range(args.repeats):
                reqs = requests(100 * (i + 1) + 1000 * rep, args.pages, n)
                t0 = time.perf_counter()
                res = eng.judge(reqs)
                times.append(time.perf_counter() - t0)
                assert all(r.ok for r in res), [r.error for r in res if not r.ok][:3]
                p_yes += [r.p_yes for r in res]
            dt = statistics.median(times)
            results.setdefault(n, {})[caching] = {"seconds": dt, "per_s": len(reqs) / dt, "p_yes": p_yes, "times_s": times,
                                                  "prompt_tokens": res[0].prompt_tokens, "load_s": load_s}
        eng.close()
        del eng
    by_n = {}
    for n, r in results.items():
        on, off = r[True], r[False]
        diff = max(abs(a - b) for a, b in zip(on["p_yes"], off["p_yes"]))
        by_n[str(n)] = {"judgements": args.pages * n, "caching_off_per_s": off["per_s"], "caching_on_per_s": on["per_s"],
                        "ratio": on["per_s"] / off["per_s"], "caching_off_s": off["seconds"],
                        "caching_on_s": on["seconds"], "caching_off_times_s": off["times_s"],
                        "caching_on_times_s": on["times_s"], "prompt_tokens_per_judgement": on["prompt_tokens"],
                        "max_abs_diff_p_yes": diff}
    import vllm

    first = str(args.questions[0])
    write_result("vllm_judge_prefix_caching_cpu",
                 f"judgements per second, vllm engine (vLLM {vllm.__version__} CPU build), {first} questions per page",
                 "judgements/s", by_n[first]["caching_off_per_s"], by_n[first]["caching_on_per_s"],
                 baseline_desc="enable_prefix_caching false: every request prefills its page image and instruction",
                 value_desc="enable_prefix_caching true: a page's requests sent together, image first, the prefix "
                            "prefilled once and reused from vLLM's KV cache",
                 by_questions_per_page=by_n, pages=args.pages,
                 model={"arch": "Qwen2VLForConditionalGeneration (random weights)", "hidden_size": 128,
                        "dtype": "float32", "image": "896x896 (1,024 image tokens)"},
                 repeats=args.repeats, load_average_at_end=os.getloadavg()[0],
                 note="only the ratio of the two sides, measured in one run, means anything (the machine may be "
                      "shared: load_average_at_end)")


if __name__ == "__main__":
    main()
