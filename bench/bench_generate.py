"""Generated requests per second when every request has its own seed (hf engine): batched vs one per forward pass.

The build gives each positives/negatives request its own seed. transformers samples a batch from one global
generator, so the hf engine used to run such requests one per ``generate`` call; it now batches them and draws each
sample from its own seeded generator. Baseline: one request per call (the old path). Value: the engine's batched
path. Both give the same texts (checked). A random-weight Qwen2 causal LM of configurable size, built locally.

    python bench/bench_generate.py                 # writes bench/results/generate_seeded_batching_cpu.json
    python bench/bench_generate.py --device cuda --hidden 1024 --layers 8 --requests 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import write_result  # noqa: E402

PROMPTS = ["Rewrite the query so that it asks for different information on the same topic: what is the total "
           "revenue in {y}?", "Write queries a user might ask about the sales of cloud software in {y}.",
           "Rephrase the question with the same meaning: how many employees did the company have in {y}?"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs per path; best is kept")
    ap.add_argument("--name", default="generate_seeded_batching_cpu")
    args = ap.parse_args(argv)

    from docrerank.engines import EngineConfig, GenerateRequest, SamplingParams, build_engine, user
    from docrerank.models.tiny import make_tiny_causal_lm

    model_dir = make_tiny_causal_lm(Path(tempfile.mkdtemp(prefix="bench_generate_")) / "qwen2", hidden_size=args.hidden,
                                    num_layers=args.layers, num_heads=max(1, args.hidden // 64), num_kv_heads=2)
    engine = build_engine(EngineConfig(backend="hf", model=str(model_dir), batch_size=args.batch_size,
                                       hf={"device": args.device, "local_files_only": True}))
    engine.json_repair = False
    reqs = [GenerateRequest([user(PROMPTS[k % len(PROMPTS)].format(y=2000 + k))],
                            SamplingParams(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens, seed=1000 + k))
            for k in range(args.requests)]
    engine.generate(reqs[:2])  # warm-up, not timed

    def one_by_one():
        return [engine.generate([r])[0] for r in reqs]

    best = {"baseline": float("inf"), "value": float("inf")}
    texts = {}
    for _ in range(args.repeats):
        for name, fn in (("baseline", one_by_one), ("value", lambda: engine.generate(reqs))):
            t = time.perf_counter()
            res = fn()
            best[name] = min(best[name], time.perf_counter() - t)
            texts[name] = [r.texts for r in res]
    same = texts["baseline"] == texts["value"]
    return write_result(
        args.name, "generated requests/s, one seed per request", "requests/s",
        args.requests / best["baseline"], args.requests / best["value"],
        same_texts=same, requests=args.requests, max_tokens=args.max_tokens, batch_size=args.batch_size,
        model=f"random Qwen2, hidden {args.hidden}, {args.layers} layers",
    )


if __name__ == "__main__":
    main()
