"""``jobs.rerank --plan`` and the rerank job's start-of-job checks: the pairs to score, the reranker and where it
loads from, the scoring actors against the cluster, GPU time, and the paths.

GPU time: the project's measured figure, 46.9 pairs/s for a 2B Qwen2-VL reranker with 1024-token pages on one
H100, through ``models.plan.reranker_cost``.
"""

from __future__ import annotations

from typing import Any, Optional

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

    # as rerank/job.py decides: cuda when the cluster has or can get GPUs, one actor per GPU by default
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


def reranker_backbone(path: str) -> Optional[str]:
    """"vlm" or "text" for the reranker at ``path`` from its ``reranker.json`` / ``config.json`` only (a hub id: its
    config from the cache, or downloaded alone when downloads are allowed), None when that cannot be read."""
    from pathlib import Path

    from docrerank.models.hub import hub_offline, read_checkpoint_json
    from docrerank.models.pages import read_card

    if path.startswith("pkg:"):
        from docrerank.models.hub import resolve_model_path

        try:
            path = resolve_model_path(path)
        except (ImportError, ValueError):
            return None
    p = Path(path)
    for cand in (p / "model" / "merged", p / "merged", p):
        if (cand / "config.json").is_file():
            return read_card(cand)["backbone"]
    if p.exists() or "://" in path:
        return None
    config = read_checkpoint_json(path, "config.json", local_files_only=hub_offline())
    if config is None:
        return None
    from docrerank.models.qwen_vl import VL_MODEL_TYPES

    return "vlm" if config.get("model_type") in VL_MODEL_TYPES else "text"


def choose_device(requested: str, res: Any, backbone: Optional[str]) -> tuple[str, Optional[str]]:
    """(device, warning) of the scoring actors. ``res``: ``core.plan.Resources`` of the cluster. "auto": cuda when
    the cluster has a GPU now, or can get one (an autoscaler with GPU node types, or one that does not publish its
    limits): the actors ask for GPUs and wait for the nodes; cpu only when no GPU can come, and then a VLM
    reranker's CPU run is said (the warning), never silent."""
    if requested != "auto":
        return requested, None
    if res.gpus > 0 or (res.max_gpus or 0) > 0:
        return "cuda", None if res.gpus > 0 else ("no GPU node is up yet: the scoring actors ask for GPUs and wait "
                                                  "for the autoscaler to add them")
    if res.grows:
        return "cuda", ("no GPU node is up yet and the autoscaler does not publish its limits: the scoring actors "
                        "ask for GPUs and wait (device=cpu scores on the CPU instead)")
    if backbone == "vlm":
        return "cpu", ("device=auto: the cluster has no GPU and cannot add one, so the VLM reranker runs on the CPU "
                       "(slow); set device=cpu to choose that, or device=cuda on a cluster with GPUs")
    return "cpu", None
