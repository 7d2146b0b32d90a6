"""``jobs.mine_negatives --plan`` and the mining job's start-of-job checks: the queries and pages, the retriever and
the false-negative filter and where their models load from, the mining and filter pools against the cluster,
judge calls and GPU time, and the paths.

Judge calls (a model filter): 2 per sampled page, ``k`` pages per query, more when pages are replaced; the
upper bound is 2 per retrieved page (``top_n - 1``). Tokens as in the build's verify stage.
"""

from __future__ import annotations

from typing import Optional

from docrerank.core import storage
from docrerank.core.plan import (
    PlanOptions,
    PlanReport,
    Resources,
    fmt_count,
    parquet_rows,
    paths_section,
    resources_section,
)
from docrerank.engines.config import EngineConfig
from docrerank.engines.plan import STAGE_HEADER, reuses_prefix, stage_cost, text_tokens
from docrerank.engines.pool import plan_pools
from docrerank.mine.config import MineConfig
from docrerank.models.sources import engine_layout, model_source
from docrerank.models.tokens import page_image_tokens
from docrerank.prompts import load_prompt

QUERY_TOKENS = 25  # a question, estimated


def plan_mine(cfg: MineConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The mining job's plan (see the module doc)."""
    from docrerank.mine.run import load_positives

    opts = opts or cfg.plan
    report = PlanReport("mine_negatives")
    pages_uri = cfg.pages or storage.resolve(cfg.input).join("pages").uri
    queries = pages = None
    try:
        queries = len(load_positives(cfg)[: cfg.limit_queries])
    except Exception as err:  # noqa: BLE001 - reported
        report.problem(f"queries ({cfg.queries or cfg.input}): {type(err).__name__}: {err}")
    try:
        pages, _ = parquet_rows(pages_uri)
    except Exception as err:  # noqa: BLE001 - reported
        report.problem(f"pages {pages_uri}: {type(err).__name__}: {err}")
    report.section("input", ["input", "queries", "pages"]).rows.append(
        [cfg.queries or cfg.input, fmt_count(queries), fmt_count(pages)])

    models = report.section("models", ["role", "model", "backend", "source", "where", "files", "gated"])
    hub = False
    roles = []
    if cfg.retriever == "colpali":
        roles.append(("retriever", cfg.colpali.model or "", "colpali", "colpali.model"))
    engine = cfg.filter.engine if isinstance(cfg.filter.engine, EngineConfig) else None
    if engine is not None:
        roles.append(("filter", engine.model, engine.backend, "filter.engine.model"))
    for role, name, backend, key in roles:
        src = model_source(name, key=key, backend="http" if backend == "http" else "hf",
                           layout=engine_layout(engine) if role == "filter" else "hf")
        models.rows.append([role, name, backend, src.kind, src.where, src.files, src.gated])
        for p in src.problems:
            report.problem(p)
        hub |= src.kind in ("cache", "hub")

    stages = report.section("stages", STAGE_HEADER)
    stages.rows.append([f"retrieve ({cfg.retriever}) + sample k={cfg.k}", cfg.colpali.model or "bm25",
                        fmt_count(queries), "", "", "?" if cfg.retriever == "colpali" else "0"])
    if engine is not None and queries is not None:
        tmpl = load_prompt(cfg.filter.prompt)
        prefix = page_image_tokens(engine.model, engine.max_pixels) + max(
            text_tokens(tmpl.get("prompt_a", "")), text_tokens(tmpl.get("prompt_b", "")))
        calls = queries * 2 * (cfg.top_n - 1)
        judged_pages = queries * (cfg.top_n - 1)
        prompt = (2 * judged_pages * prefix + calls * QUERY_TOKENS) if reuses_prefix(engine) \
            else calls * (prefix + QUERY_TOKENS)
        cost = stage_cost("false-negative filter", engine, calls, prompt, calls, opts)
        stages.rows.append(cost.row())
        stages.notes.append(f"filter calls are an upper bound (every retrieved page judged); throughput: {cost.figure}")
    else:
        stages.rows.append([f"false-negative filter ({cfg.filter.engine if engine is None else ''})", "model-free",
                            "", "", "", "0"])

    pools = report.section("actor pools", ["pool", "actors", "GPUs/actor", "CPUs/actor", "GPUs", "CPUs"])
    mine_gpus = cfg.colpali.num_gpus if cfg.retriever == "colpali" else 0.0
    need_gpus, need_cpus = mine_gpus, cfg.num_cpus  # the mining pool starts with one actor
    pools.rows.append(["mine (retrieve, sample)", f"1..{cfg.num_workers or ('1' if mine_gpus else 'CPUs')}",
                       mine_gpus, cfg.num_cpus, mine_gpus, cfg.num_cpus])
    pool_plan = plan_pools({"filter": engine}, None)  # sized as the job starts it; the totals checked below
    for p in pool_plan.problems:
        report.problem(p)
    for pool in pool_plan.pools:
        n = pool.min_actors  # the pool's minimum; it grows to max_actors as the cluster allows
        g, cpus = (pool.shape.gpus, pool.shape.cpus) if pool.shape else (0.0, 0.0)
        pools.rows.append([f"filter: {pool.engine.model}", n if n == pool.max_actors else f"{n}..{pool.max_actors}",
                           g if pool.shape else "?", cpus if pool.shape else "?", n * g, n * cpus])
        need_gpus += n * g
        need_cpus += n * cpus
    if cfg.retriever == "colpali":
        need_gpus = max(need_gpus, cfg.colpali.num_gpus)  # the index is built first, by one GPU task
    resources_section(report, res, need_gpus, need_cpus)

    reads = [(k, v) for k, v in (("input", cfg.input), ("pages", cfg.pages), ("queries", cfg.queries)) if v]
    writes = [("output", cfg.output)]
    if hub:
        from huggingface_hub import constants

        writes.append(("Hugging Face cache (HF_HOME) of this machine", constants.HF_HUB_CACHE))
    paths_section(report, reads, writes)
    return report
