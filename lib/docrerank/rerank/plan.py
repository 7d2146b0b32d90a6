"""``jobs.rerank --plan`` and the rerank job's start-of-job checks: the pairs to score, the reranker and where it
loads from, the scoring actors against the cluster, GPU time, and the paths. Also ``reranker_cost``, the scoring
estimate the evaluation's plan shares.

GPU time: the project's measured figure, 46.9 pairs/s for a 2B Qwen2-VL reranker with 1024-token pages on one
H100 (``bench/results/rerank_pairs_per_s_cuda_vlm_2b.json``), through ``core.plan.throughput_for`` (a
configured ``plan.throughput`` for the base model wins).
"""

from __future__ import annotations

from typing import Optional

from docrerank.core.plan import (
    PlanOptions,
    PlanReport,
    Resources,
    fmt_count,
    fmt_hours,
    parquet_rows,
    paths_section,
    resources_section,
    throughput_for,
)
from docrerank.models.sources import ModelSource, reranker_source, trained_base
from docrerank.rerank.config import RerankConfig

PAIR_TOKENS = 1024 + 70  # a page at the default pixel cap and the MonoQwen prompt with a query


def reranker_cost(path: str, pairs: Optional[int], device: str, opts: PlanOptions) -> tuple[Optional[float], str]:
    """(GPU-seconds to score ``pairs`` pairs with the reranker at ``path``, the figure used); (0, ...) on the CPU."""
    if device != "cuda":
        return 0.0, "CPU: no GPU time"
    base = trained_base(path) or path
    figure, source = throughput_for(base, opts)
    if figure is None or pairs is None:
        return None, source
    return pairs * PAIR_TOKENS / figure.prompt_tokens_per_s, source


def model_row(src: ModelSource) -> list:
    """The row of a model in a plan's ``models`` table."""
    return [src.name, src.kind, src.where, src.files, src.gated]


def plan_rerank(cfg: RerankConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The rerank job's plan (see the module doc)."""
    opts = opts or cfg.plan
    report = PlanReport("rerank")
    try:
        pairs, files = parquet_rows(cfg.input)
    except Exception as err:  # noqa: BLE001 - reported
        report.problem(f"input {cfg.input}: {type(err).__name__}: {err}")
        pairs, files = None, None
    report.section("input", ["input", "files", "pairs"]).rows.append([cfg.input, fmt_count(files), fmt_count(pairs)])

    src = reranker_source(cfg.reranker.path)
    for p in src.problems:
        report.problem(p)
    report.section("models", ["model", "source", "where", "files", "gated"]).rows.append(model_row(src))

    # as rerank/job.py decides: cuda when the cluster has or can get GPUs, one actor per GPU by default
    from docrerank.rerank.job import choose_device, reranker_backbone

    device, why = choose_device(cfg.device, res, reranker_backbone(cfg.reranker.path) if not src.problems else None)
    actors = cfg.num_actors or (max(1, int(res.gpus or res.max_gpus or 0)) if device == "cuda" else 1)
    gpus_each = 1 if device == "cuda" else 0
    gpu_s, source = reranker_cost(cfg.reranker.path, pairs, device, opts)
    sec = report.section("stages", ["stage", "device", "actors", "GPUs/actor", "CPUs/actor", "GPU-h", "wall h"])
    sec.rows.append(["score", device, actors, gpus_each, cfg.cpus_per_actor, fmt_hours(gpu_s),
                     fmt_hours(None if gpu_s is None else gpu_s / actors)])
    sec.notes.append(f"throughput: {source}")
    if why:
        sec.notes.append(why)
    resources_section(report, res, actors * gpus_each, actors * cfg.cpus_per_actor, what=f"{actors} scoring actor(s)")
    reads = [("input", cfg.input)] + ([("pages", cfg.pages)] if cfg.pages else [])
    paths_section(report, reads, [("output", cfg.output)])
    return report
