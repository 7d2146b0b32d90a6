"""Benchmark the shared page prefix in training (``model.shared_prefix``): training samples/s and model FLOPs per
group of the per-pair path (every (page, query) pair runs the language model in full) against the shared-prefix
path (each page's prefix once, the queries against it), same model weights, same batches, in one process with the
steps of the two paths interleaved (a shared, loaded machine slows both alike).

    python bench/bench_train_prefix.py [--steps 6] [--groups 1] [--threads 1] [--max-pixels 802816]

A random Qwen2-VL whose pages are long next to the queries, as in the paper's setting: ``--max-pixels`` 802816 gives
~1,000 image tokens per page (sample-corpus pages rendered at 100 dpi), queries of ~30 tokens, groups of
1 positive + 3 negatives (k = 3); LoRA r=32, gradient checkpointing, plain torch AdamW (``step.PlainEngine``),
float32. A small language model (hidden 256, 4 layers) and a 1-block vision tower keep a step in seconds on a CPU;
the FLOP ratio (counted by ``train/flops.py``: the vision tower's forward once per page on both paths, the
language model's forward and backward as laid out) is what carries over to a GPU and to a 2B model.
Writes bench/results/train_shared_prefix_cpu.json (baseline: per-pair samples/s; value: shared-prefix samples/s).
"""

from __future__ import annotations

import argparse
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

MODEL = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, vision_embed_dim=32, vision_depth=1,
             vision_heads=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per path (after 1 warm-up step)")
    ap.add_argument("--groups", type=int, default=1, help="groups (1 positive + 3 negatives) per step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--max-pixels", type=int, default=28 * 28 * 1024, help="page pixel cap (1,024 tokens)")
    ap.add_argument("--dpi", type=float, default=100.0, help="page rendering resolution")
    args = ap.parse_args()

    import torch

    from common import write_result
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples
    from docrerank.models.tiny import make_tiny_qwen2_vl
    from docrerank.models.backbones import build_scorer
    from docrerank.data.collate import collate_groups, iter_group_batches
    from docrerank.train.config import TrainConfig
    from docrerank.data.examples import read_groups
    from docrerank.train.step import PlainEngine, prepare, train_step

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-prefix-"))
    model = make_tiny_qwen2_vl(work / "model", **MODEL)
    corpus = make_corpus(work / "corpus", num_companies=2, years=[2021])
    examples = make_examples(work / "examples", corpus, dpi=args.dpi)
    groups = [g for g in read_groups(str(examples)) if len(g.queries) == 4]
    need = (args.steps + 1) * args.groups
    if len(groups) < need:
        sys.exit(f"only {len(groups)} groups of 4 examples; need {need}")
    batches = [collate_groups(gs) for gs in iter_group_batches(groups[:need], args.groups)]

    paths = {}
    for shared in (False, True):
        cfg = TrainConfig.model_validate({
            "output": str(work / "out"), "data": {"sources": [{"path": str(examples)}]},
            "model": {"path": str(model), "max_pixels": args.max_pixels, "max_seq_len": 4096,
                      "gradient_checkpointing": True, "shared_prefix": shared},
            "deepspeed": {"enabled": False}, "optim": {"warmup_steps": 0}})
        scorer = build_scorer(cfg.model, cfg.lora, seed=0)  # same seed: the same LoRA init on both paths
        engine = PlainEngine(scorer, cfg, total_steps=len(batches), device="cpu")
        mbs = [prepare(scorer, b) for b in batches]  # encoded before the clock: the model's work only
        paths["shared" if shared else "per_pair"] = {"engine": engine, "cfg": cfg, "mbs": mbs, "times": [],
                                                     "losses": [], "scorer": scorer}
    first = paths["per_pair"]["mbs"][0]
    image_tokens = int((first.inputs["mm_token_type_ids"][0] == 1).sum())
    query_tokens = [len(scorer.tokenizer(q, add_special_tokens=False)["input_ids"]) for q in batches[0].queries]

    for i in range(len(batches)):
        order = ("per_pair", "shared") if i % 2 == 0 else ("shared", "per_pair")
        for name in order:
            p = paths[name]
            t0 = time.perf_counter()
            stats = train_step(p["engine"], [p["mbs"][i]], p["cfg"].loss, "cpu")
            dt = time.perf_counter() - t0
            p["losses"].append(stats["loss"])
            if i > 0:  # step 0 warms up
                p["times"].append(dt)
            print(f"step {i} {name}: {dt:.2f} s, loss {stats['loss']:.4f}", file=sys.stderr, flush=True)

    out = {}
    for name, p in paths.items():
        timed = p["mbs"][1:]
        n = sum(mb.examples for mb in timed)
        n_groups = sum(len(mb.seqs) for mb in timed)
        flops = [p["scorer"].model_flops(mb.inputs) for mb in timed]
        out[name] = {
            "samples_per_s": n / sum(p["times"]),
            "step_s_median": statistics.median(p["times"]),
            "step_s": [round(t, 3) for t in p["times"]],
            "lm_tokens_per_group": sum(mb.tokens for mb in timed) / n_groups,
            "model_flops_per_group": sum(f["total"] for f in flops) / n_groups,
            "lm_flops_per_group": sum(f["lm"] for f in flops) / n_groups,
            "vision_flops_per_group": sum(f["vision"] for f in flops) / n_groups,
            "losses": [round(x, 6) for x in p["losses"]],
        }
    base, ours = out["per_pair"], out["shared"]
    # the same weights and batches: the losses follow each other step by step, apart by LoRA dropout's masks (the
    # shared path draws one for a page's prefix, the per-pair path one per pair) and float rounding
    drift = max(abs(a - b) for a, b in zip(base["losses"], ours["losses"]))
    write_result(
        "train_shared_prefix_cpu",
        metric="training samples/s, vlm scorer: shared page prefix (each page's prefix once per micro-batch) vs "
               "per-pair (every pair in full), same weights, same batches, interleaved steps",
        unit="samples/s", baseline=base["samples_per_s"], value=ours["samples_per_s"],
        flop_ratio=round(base["model_flops_per_group"] / ours["model_flops_per_group"], 3),
        lm_flop_ratio=round(base["lm_flops_per_group"] / ours["lm_flops_per_group"], 3),
        max_loss_difference=drift, variants=out,
        model=f"random Qwen2-VL {MODEL}, LoRA r=32 (language model), gradient checkpointing, fp32, PlainEngine",
        batch=f"{args.groups} groups x (1 positive + 3 negatives) per step, {image_tokens} image tokens on the first "
              f"page, queries of {min(query_tokens)}-{max(query_tokens)} tokens (mean "
              f"{statistics.mean(query_tokens):.1f}), max_pixels {args.max_pixels}",
        threads=args.threads, steps_timed=args.steps, load_average=list(os.getloadavg()),
        note=("Sum of the timed steps of each path (step 0 left out), the two paths' steps interleaved in one "
              "process on a shared, loaded 2-CPU machine: only the ratio is meaningful. flop_ratio: model FLOPs "
              "per group (vision forward once per page on both paths; language model forward + backward as laid "
              "out; recomputation not counted) per-pair / shared: the gain a compute-bound GPU can expect."),
    )


if __name__ == "__main__":
    main()
