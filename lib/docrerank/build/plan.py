"""``jobs.build_dataset --plan`` and the build's start-of-job checks: stages, models and where they load from, one
actor pool per distinct model, GPUs and CPUs against the cluster, model calls, tokens and GPU-hours for the
input's pages, and the paths the build reads and writes.

Calls per page (upper bounds: dedup, the text prefilter and failed requests only lower them): positives 1
request when a VLM writes them; verify 2 judge calls per positive candidate; negatives 1 request per kept
positive (at most ``verify.max_positives``); verify 2 judge calls per negative candidate; rephrase 1 request
per rephrased positive. Tokens: a page's image tokens (its pixel cap / 28^2 for Qwen-VL) + the prompt
template + the query for each call, the image and instruction counted once per page and prompt when the
engine reuses the prefix; output tokens at each stage's ``max_tokens`` budget (1 for a judgement).
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Union

from docrerank.build.config import BuildConfig
from docrerank.build.stages import VerifyStage, model_stage_engines
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
from docrerank.engines.config import EngineConfig
from docrerank.engines.plan import STAGE_HEADER, StageCost, reuses_prefix, stage_cost, text_tokens
from docrerank.engines.pool import PoolPlan, plan_pools
from docrerank.models.sources import engine_layout, model_source
from docrerank.models.tokens import page_image_tokens
from docrerank.prompts import load_prompt

MODEL_FREE_CPUS = 0.9  # build/run.py: a model-free actor's CPUs (the pool starts with one)
QUERY_TOKENS = 25  # a question, estimated
GIVEN_PER_PAGE = 1  # given positives per page, estimated (the sample corpus has one)


def model_stages(cfg: BuildConfig) -> list[tuple[str, Union[str, EngineConfig]]]:
    """(stage, engine config or model-free engine name) in order."""
    return [(stage, e) for stage, e in model_stage_engines(cfg).items() if stage != "rephrase" or e != "none"]


def model_pools(cfg: BuildConfig) -> PoolPlan:
    """The build's model pools as the job starts them (``engines.pool.plan_pools``: one pool per distinct model,
    shared by the stages that use it, sized from ``engine.ray``), named by the stages of ``model_stages``; the
    totals are checked against the cluster by ``plan_build``."""
    return plan_pools(dict(model_stages(cfg)), None)


def _prompt_tokens(name: str, keys: Optional[tuple[str, ...]] = None) -> int:
    data = load_prompt(name)
    texts = [v for k, v in data.items() if isinstance(v, str) and (keys is None or k in keys)]
    return max(text_tokens(t) for t in texts) if texts else 0


def page_count(cfg: BuildConfig, opts: PlanOptions, report: PlanReport) -> tuple[Optional[int], str]:
    """(pages the build will process, how that was counted)."""
    if cfg.input:
        from docrerank.render.plan import count_input_pages

        count = count_input_pages(cfg.input, cfg.ingest.suffixes, opts)
        if count.problem:
            report.problem(count.problem)
        pages, how = count.pages, f"{count.how}; {fmt_count(count.files)} files"
    elif opts.input_pages is not None:
        pages, how = opts.input_pages, "configured (plan.input_pages)"
    else:
        src = cfg.pages or cfg.query_pages
        try:
            pages, files = parquet_rows(src)
            how = f"rows of {files} Parquet file(s) (footers)"
        except Exception as err:  # noqa: BLE001 - reported, the plan goes on
            report.problem(f"{'pages' if cfg.pages else 'query_pages'} {src}: {type(err).__name__}: {err}")
            pages, how = None, "not counted"
    if pages is not None and cfg.limit_pages:
        pages, how = min(pages, cfg.limit_pages), how + f"; limit_pages={cfg.limit_pages}"
    return pages, how


def stage_costs(cfg: BuildConfig, pages: int, opts: PlanOptions) -> list[StageCost]:
    """Calls and tokens of every model stage for ``pages`` pages (see the module doc)."""
    costs = []
    given = cfg.positives.engine == "given"
    candidates = GIVEN_PER_PAGE if given else cfg.positives.num_candidates
    kept = min(candidates, cfg.verify.max_positives)
    if not given:
        e = cfg.positives.engine
        assert isinstance(e, EngineConfig)
        prompt: float = page_image_tokens(e.model, e.max_pixels) + _prompt_tokens(cfg.positives.prompt)
        costs.append(stage_cost("positives", e, pages, pages * prompt, pages * cfg.positives.max_tokens, opts))
    if isinstance(cfg.verify.engine, EngineConfig):
        e = cfg.verify.engine
        prefix = page_image_tokens(e.model, e.max_pixels) + _prompt_tokens(cfg.verify.prompt, ("prompt_a", "prompt_b"))
        for stage, per_page in ((VerifyStage.name_of("positive"), 2 * candidates),
                                (VerifyStage.name_of("negative"), 2 * kept * cfg.negatives.num_candidates)):
            calls: float = pages * per_page
            prompt = (pages * 2 * prefix + calls * QUERY_TOKENS) if reuses_prefix(e) else calls * (prefix + QUERY_TOKENS)
            costs.append(stage_cost(stage, e, calls, prompt, calls, opts))
    if isinstance(cfg.negatives.engine, EngineConfig):
        e = cfg.negatives.engine
        name = cfg.negatives.general_prompt if cfg.negatives.mode == "general" else cfg.negatives.attributes_prompt
        calls = pages * kept
        costs.append(stage_cost("negatives", e, calls, calls * (_prompt_tokens(name) + QUERY_TOKENS),
                                calls * cfg.negatives.max_tokens, opts))
    if isinstance(cfg.rephrase.engine, EngineConfig):
        e = cfg.rephrase.engine
        calls = pages * kept * cfg.rephrase.fraction
        costs.append(stage_cost("rephrase", e, calls, calls * (_prompt_tokens(cfg.rephrase.prompt) + QUERY_TOKENS),
                                calls * cfg.rephrase.max_tokens, opts))
    return costs


def plan_build(cfg: BuildConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The dataset build's plan (see the module doc)."""
    opts = opts or cfg.plan
    report = PlanReport("build_dataset")
    pages, how = page_count(cfg, opts, report)
    report.section("input", ["input", "pages", "counted"]).rows.append(
        [cfg.input or cfg.pages or cfg.query_pages, fmt_count(pages), how])

    pool_plan = model_pools(cfg)
    costs = stage_costs(cfg, pages or 0, opts) if pages is not None else []
    sec = report.section("stages", STAGE_HEADER)
    by_stage = {c.stage: c for c in costs}
    for stage, engine in model_stages(cfg):
        if stage in by_stage:
            sec.rows.append(by_stage[stage].row())
        elif isinstance(engine, EngineConfig):
            sec.rows.append([stage, engine.model, "?", "?", "?", "?"])
        else:
            sec.rows.append([stage, f"{engine} (model-free)", "", "", "", "0"])
    sec.rows.append(["select (k={})".format(cfg.select.k), "model-free", "", "", "", "0"])
    sec.notes.append("calls and tokens are upper bounds (before dedup, the text prefilter and rejections); "
                     "prompt text ~4 characters per token")
    for source in sorted({c.figure for c in costs}):
        sec.notes.append(f"throughput: {source}")

    models = report.section("models", ["model", "backend", "stages", "source", "where", "files", "gated"])
    hub_models = False
    for pool in pool_plan.pools:
        src = model_source(pool.engine.model, key=f"{pool.stages[0]}.engine.model", backend=pool.engine.backend,
                           layout=engine_layout(pool.engine))
        models.rows.append([pool.engine.model, pool.engine.backend, ", ".join(pool.stages), src.kind, src.where,
                            src.files, src.gated])
        for p in src.problems:
            report.problem(p)
        hub_models |= src.kind in ("cache", "hub")
        if src.gated.startswith("gated") and src.kind == "hub":
            models.notes.append(f"{pool.engine.model} is gated: the nodes need HF_TOKEN, a token whose account "
                                "accepted its licence (cluster/README.md, 'Gated models')")
        if pool.engine.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            models.notes.append("vllm is not installed here; the GPU workers need it (the image of cluster/README.md)")

    psec = report.section("actor pools", ["pool", "stages", "actors", "GPUs/actor", "CPUs/actor", "GPUs", "CPUs",
                                          "GPU-h", "wall h"])
    for p in pool_plan.problems:
        report.problem(p)
    need_gpus = need_cpus = 0.0
    slowest = 0.0
    for i, pool in enumerate(pool_plan.pools):
        gpu_s = sum((c.gpu_s or 0.0) for c in costs if c.stage in pool.stages)
        unknown = pages is None or any(c.gpu_s is None for c in costs if c.stage in pool.stages)
        n = pool.min_actors  # the minimum must fit at once; the pool grows to max_actors as the cluster allows
        g, cpus = (pool.shape.gpus, pool.shape.cpus) if pool.shape else (0.0, 0.0)
        wall = gpu_s / (n * g) if n * g else None
        slowest = max(slowest, wall or 0.0)
        psec.rows.append([f"{i}: {pool.engine.model}", ", ".join(pool.stages),
                          n if n == pool.max_actors else f"{n}..{pool.max_actors}", g if pool.shape else "?",
                          cpus if pool.shape else "?", n * g, n * cpus, "?" if unknown else fmt_hours(gpu_s),
                          "?" if unknown or wall is None else fmt_hours(wall)])
        need_gpus += n * g
        need_cpus += n * cpus
    psec.rows.append(["model-free stages", "rules/text/select/write", f"1..{cfg.num_workers or 'CPUs'}", 0,
                      MODEL_FREE_CPUS, 0, MODEL_FREE_CPUS, "0", ""])
    need_cpus += MODEL_FREE_CPUS
    psec.notes.append("one pool per distinct model config, shared by the stages that use it; stages stream "
                      "concurrently, so the build's model time is about its slowest pool"
                      + (f": {fmt_hours(slowest)} h; {fmt_hours(sum(c.gpu_s or 0 for c in costs))} GPU-h in all"
                         if pages is not None else ""))
    resources_section(report, res, need_gpus, need_cpus)

    if cfg.positives_file:  # a malformed file fails here, before Ray starts or anything is ingested
        from docrerank.build.sources import read_positives

        try:
            read_positives(cfg.positives_file)
        except (ValueError, OSError) as e:
            if not isinstance(e, FileNotFoundError):  # a missing file: the paths section says so
                report.problem(str(e))
    reads = [(k, v) for k, v in (("pages", cfg.pages), ("query_pages", cfg.query_pages),
                                 ("positives_file", cfg.positives_file)) if v]
    writes = [("output", cfg.output)]
    if hub_models:
        from huggingface_hub import constants

        writes.append(("Hugging Face cache (HF_HOME) of this machine", constants.HF_HUB_CACHE))
    paths_section(report, reads, writes)
    return report
