"""Judged requests per second through one engine: a model pool with calls in flight vs one batch at a time.

Same random-weight Qwen2-VL-architecture judge (the hf engine, or ``--backend vllm``: vLLM's CPU build, a real
``vllm.LLM`` in each actor), same requests, same Ray, one engine in both:

- baseline: the engine inside one pipeline worker, as when each model stage was its own Ray Data actor pool:
  the worker builds a batch's requests, calls ``engine.judge`` and waits, then builds the next;
- value: the engine in a model pool (``engines.pool_ray``, ``batches_in_flight`` 4) and ``--workers`` pipeline
  workers sending their batches' calls to it, so calls wait in the actor while the engine runs and the next run
  takes them together;
- also reported: the same pool with ``batches_in_flight`` 1 (``pool_one_in_flight``: one call per engine run), so
  the gain of several batches in flight per actor shows apart from the workers' overlap.

A batch is ``--pages-per-batch`` pages x ``--queries`` questions x the two verify prompts. Both paths run
alternately ``--repeats`` times; the best time of each is kept (the machine may be shared). On a CPU the engine's
compute dominates and what changes is the engine's batch size and the workers' overlap; the idle GPU between
batches that the pool is for shows only on a GPU (``--device cuda``, with ``--hidden``/``--layers`` of a real
model's shape or ``--model`` a checkpoint).

    python bench/bench_pool.py            # writes bench/results/pool_in_flight_cpu.json
    python bench/bench_pool.py --backend vllm --out pool_in_flight_vllm_cpu
    python bench/bench_pool.py --device cuda --shape-2b --size 896 --batches 24 --out pool_in_flight_cuda_2b
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))

from bench_judge import QUERIES, make_page  # noqa: E402
from common import write_result  # noqa: E402


def batch_requests(pages: list, queries: int) -> list:
    """The judge requests of one batch: every page x question x both verify prompts, image first."""
    from docrerank.engines import JudgeRequest, user
    from docrerank.prompts import load_prompt

    prompt = load_prompt("verify")
    return [JudgeRequest([user(page, prompt[key].format(query=q.format(y=2020 + p)))], yes=prompt["answer_yes"],
                         no=prompt["answer_no"], id=f"{p}:{i}:{key}")
            for p, page in enumerate(pages) for i, q in enumerate(QUERIES[:queries]) for key in ("prompt_a", "prompt_b")]


class EngineInWorker:
    """The baseline: a pipeline worker that holds the engine and judges its batches one after the other."""

    def __init__(self, cfg):
        from docrerank.engines import build_engine

        self.engine = build_engine(cfg)

    def run(self, batches: list, queries: int) -> int:
        n = 0
        for pages in batches:
            n += sum(r.ok for r in self.engine.judge(batch_requests(pages, queries)))
        return n


def pool_worker(handles, batches: list, queries: int) -> int:
    """A pipeline worker of the value path: its batches' calls go to the model pool."""
    client = handles.client("verify")
    return sum(sum(r.ok for r in client.judge(batch_requests(pages, queries))) for pages in batches)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=12, help="batches in all")
    ap.add_argument("--pages-per-batch", type=int, default=2)
    ap.add_argument("--queries", type=int, default=4, help="questions per page (two prompts each)")
    ap.add_argument("--workers", type=int, default=4, help="pipeline workers sending calls to the pool")
    ap.add_argument("--size", type=int, default=672, help="page side in pixels (672: 576 image tokens; >= 640)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                    help="vllm: vLLM's CPU build on a CPU (vllm.cpu), the GPU build with --device cuda")
    ap.add_argument("--model", default=None, help="a checkpoint instead of the random tiny model")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shape-2b", action="store_true", help="Qwen2-VL-2B's shapes (bench/gpu_check.py), for a GPU")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="pool_in_flight_cpu")
    args = ap.parse_args(argv)

    import ray

    from docrerank.engines import EngineConfig
    from docrerank.engines.pool import plan_pools
    from docrerank.engines.pool_ray import ModelPools, cluster_resources
    from docrerank.models.tiny import make_tiny_qwen2_vl

    tmp = tempfile.mkdtemp(prefix="bench-pool-")
    if args.shape_2b:
        from gpu_check import QWEN2_VL_2B as dims
    else:
        dims = {"hidden_size": args.hidden, "num_layers": args.layers}
    model = args.model or str(make_tiny_qwen2_vl(Path(tmp) / "qwen2vl", **dims))
    gpus = 1 if args.device.startswith("cuda") else 0
    per_batch = args.pages_per_batch * args.queries * 2
    ray_opts = {"num_cpus": 0.5, "batch_size": per_batch, "batches_in_flight": 4}
    if args.backend == "vllm":  # one engine per actor; on a CPU vLLM's CPU build with a small KV cache (share of RAM)
        vllm = {"engine_kwargs": {"enforce_eager": True}, **({} if gpus else {"cpu": True, "kv_cache_gib": 0.25})}
        cfg = EngineConfig(backend="vllm", model=model, max_pixels=args.size * args.size, max_model_len=4096,
                           dtype="bfloat16" if gpus else "float32", vllm=vllm, ray=ray_opts)
    else:
        cfg = EngineConfig(backend="hf", model=model, max_pixels=args.size * args.size, batch_size=8,
                           dtype="bfloat16" if gpus else "float32", hf={"device": args.device, "local_files_only": True},
                           ray={**ray_opts, "num_gpus": gpus})
    pages = [make_page(i, args.size) for i in range(args.pages_per_batch * args.batches)]
    batches = [pages[i:i + args.pages_per_batch] for i in range(0, len(pages), args.pages_per_batch)]
    total = len(batches) * per_batch
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent / "lib"),
                                       "HF_HUB_OFFLINE": "1"}})
    base_actor = ray.remote(EngineInWorker).options(num_cpus=0.5, num_gpus=gpus).remote(cfg)
    ray.get(base_actor.run.remote(batches[:1], args.queries))  # warm-up
    worker = ray.remote(num_cpus=0.1)(pool_worker)
    times: dict[str, list[float]] = {"baseline": [], "value": [], "pool_one_in_flight": []}
    summaries = {}
    # the pool as configured (calls in flight), then the same pool taking one call at a time (batches_in_flight 1):
    # one pool alive at a time, each timed alternately with the baseline
    for key, in_flight in (("value", 4), ("pool_one_in_flight", 1)):
        pool_cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"batches_in_flight": in_flight})})
        with ModelPools.start(plan_pools({"verify": pool_cfg}, cluster_resources())) as pools:
            ray.get(worker.remote(pools.handles, batches[:1], args.queries))  # warm-up
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ok = ray.get(base_actor.run.remote(batches, args.queries))
                times["baseline"].append(time.perf_counter() - t0)
                assert ok == total, (ok, total)
                t0 = time.perf_counter()
                shares = [batches[w::args.workers] for w in range(args.workers)]
                ok = sum(ray.get([worker.remote(pools.handles, s, args.queries) for s in shares]))
                times[key].append(time.perf_counter() - t0)
                assert ok == total, (ok, total)
            [summaries[key]] = pools.summary()
    ray.shutdown()
    baseline, value = total / min(times["baseline"]), total / min(times["value"])
    one = total / min(times["pool_one_in_flight"])
    summary = summaries["value"]
    return write_result(args.out, f"judged requests/s through one {args.backend} engine: pool with calls in flight vs "
                        "one batch at a time in the worker", "requests/s", baseline, value, requests=total,
                        backend=args.backend,
                        workers=args.workers, times_s=times, engine_runs=summary["engine_runs"],
                        calls=summary["calls"], most_waiting_calls=summary["most_waiting_calls"],
                        pool_one_in_flight={"requests_per_s": round(one, 4), "ratio_of_value_to_it": round(value / one, 4),
                                            "engine_runs": summaries["pool_one_in_flight"]["engine_runs"]})


if __name__ == "__main__":
    main()
