"""``jobs.rerank --plan`` and the rerank job's start-of-job checks: the pairs to score, the reranker and where it
loads from, the scoring actors against the cluster, GPU time, and the paths.

GPU time: the project's measured figure, 46.9 pairs/s for a 2B Qwen2-VL reranker with 1024-token pages on one
H100, through ``models.plan.reranker_cost``.
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
)
from docrerank.models.plan import model_row, reranker_cost
from docrerank.models.sources import reranker_source
from docrerank.rerank.config import RerankConfig


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

    # as rerank/job.py decides: cuda when the cluster has GPUs now, one actor per GPU by default
    device = cfg.device if cfg.device != "auto" else ("cuda" if res.gpus else "cpu")
    actors = cfg.num_actors or (max(1, int(res.gpus)) if device == "cuda" else 1)
    gpus_each = 1 if device == "cuda" else 0
    gpu_s, source = reranker_cost(cfg.reranker.path, pairs, device, opts)
    sec = report.section("stages", ["stage", "device", "actors", "GPUs/actor", "CPUs/actor", "GPU-h", "wall h"])
    sec.rows.append(["score", device, actors, gpus_each, cfg.cpus_per_actor, fmt_hours(gpu_s),
                     fmt_hours(None if gpu_s is None else gpu_s / actors)])
    sec.notes.append(f"throughput: {source}")
    resources_section(report, res, actors * gpus_each, actors * cfg.cpus_per_actor, what=f"{actors} scoring actor(s)")
    reads = [("input", cfg.input)] + ([("pages", cfg.pages)] if cfg.pages else [])
    paths_section(report, reads, [("output", cfg.output)])
    return report
