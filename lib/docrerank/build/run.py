"""The dataset build on Ray Data: sources -> stages -> sharded, resumable outputs -> stats and card.

Outputs under ``output``: pages/ (from ingest or a query-page set), queries/ (every candidate with both
verifier scores, verdict and reason), examples/ (groups of 1 positive + k negatives), export/ (ColHNQue
layout), page_status/ (one row per finished page; written last per shard, so it marks progress),
quarantine/, stats.json, card.md, _meta/. Shards are named by a hash of their pages and written atomically;
a rerun skips finished pages, so an interrupted build resumes to exactly the output of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from docrerank.build.config import BuildConfig
from docrerank.build.sources import AttachState, build_vocabulary, load_given, query_pages_source
from docrerank.build.stages import (
    PAGE_COLUMNS,
    NegativesStage,
    PositivesStage,
    RephraseStage,
    SelectStage,
    VerifyStage,
    model_stage_engines,
)
from docrerank.build.write import MARKER, OUTPUT_TABLES, UNFINISHED, WriteStage, done_pages
from docrerank.core import storage
from docrerank.core.raydata import (
    READ_CPUS,
    ChainStage,
    StageSpec,
    batch_format_of,
    excluded_from_ray_data,
    iter_checked,
    read_parquet_files,
    read_parquet_files_list,
    remove_empty_shards,
    remove_orphans,
)
from docrerank.engines.pool import ClusterResources, PoolPlan
from docrerank.engines.pool_ray import ModelPools
from docrerank.engines.requests import UNFINISHED_KINDS
from docrerank.render.config import IngestConfig

log = logging.getLogger("docrerank.build")

# Model-free actors leave a sliver of their core to the light read tasks (``READ_CPUS``), so a pool as large as
# the machine never starves the read (a deadlock Ray Data cannot resolve on one small node).
MODEL_FREE_CPUS = 0.9
POOL_CHECK_S = 5.0  # the model pools are checked this often while the build runs


def stage_engines(cfg: BuildConfig) -> dict:
    """The engine config of every model stage, by stage name (``engines.pool.plan_pools`` takes this; the two
    verification stages name the same judge, so they share its pool)."""
    return {stage: e for stage, e in model_stage_engines(cfg).items() if not isinstance(e, str)}


def stage_specs(cfg: BuildConfig, vocab: dict, given: dict, done: set, limit_ids, write_pages: bool,
                pools=None) -> list[StageSpec]:
    """``(StageClass, kwargs)`` for every stage, in order; model stages reach their pool through ``pools``
    (``engines.pool_ray.PoolHandles``; None: each builds its own engine)."""
    specs = [
        (AttachState, {"given": given, "done": done, "limit_ids": limit_ids}),
        (PositivesStage, {"cfg": cfg, "pools": pools}),
        (VerifyStage, {"cfg": cfg, "role": "positive", "pools": pools}),
        (NegativesStage, {"cfg": cfg, "vocabulary": vocab, "pools": pools}),
        (VerifyStage, {"cfg": cfg, "role": "negative", "pools": pools}),
        (SelectStage, {"cfg": cfg}),
    ]
    if cfg.rephrase.engine != "none":
        specs.append((RephraseStage, {"cfg": cfg, "pools": pools}))
    specs.append((WriteStage, {"output": cfg.output, "k": cfg.select.k, "write_pages": write_pages,
                               "holdout_fraction": cfg.holdout_fraction, "seed": cfg.seed}))
    return specs


@dataclass
class Sources:
    """What the pages come from: the pages table (ingested, given, or written from a query-page set) and the
    given positives by page id."""

    pages: storage.Location
    given: dict
    write_pages: bool = False  # a query-page set: its pages are written as a pages table too
    ingest_stats: dict | None = None


def resolve_sources(cfg: BuildConfig, out: storage.Location) -> Sources:
    """Run the ingest when ``input`` is given; find the pages table and load the given positives."""
    from docrerank.render.run import run_ingest

    positives_file = cfg.positives_file
    if cfg.input:
        ingest_stats = run_ingest(IngestConfig(input=cfg.input, output=cfg.output, **cfg.ingest.model_dump()))
        if cfg.input.startswith("sample:") and positives_file is None and cfg.positives.sample_questions:
            positives_file = str(Path(cfg.output) / "sample_corpus" / "questions.jsonl")
        src = Sources(out.join("pages"), {}, ingest_stats=ingest_stats)
    elif cfg.pages:
        src = Sources(storage.resolve(cfg.pages), {})
    else:
        src = Sources(out.join("pages"), {}, write_pages=True)
    if positives_file:
        src.given = load_given(positives_file, src.pages)
    return src


def read_pages(cfg: BuildConfig, src: Sources):
    """(dataset of page rows, the page ids ``limit_pages`` keeps or None)."""
    if cfg.query_pages:
        qp = storage.resolve(cfg.query_pages)
        ds = read_parquet_files(qp) if storage.is_dir(qp) else read_parquet_files_list([qp.uri])
        if cfg.limit_pages:
            ds = ds.limit(cfg.limit_pages)
        return ds.map_batches(query_pages_source, batch_size=cfg.pages_per_batch, num_cpus=READ_CPUS), None
    limit_ids = None
    if cfg.limit_pages:
        ids = storage.read_parquet_dir(src.pages, columns=["page_id"]).column("page_id").to_pylist()
        limit_ids = set(sorted(ids)[: cfg.limit_pages])
    return read_parquet_files(src.pages, PAGE_COLUMNS), limit_ids


def chain_stages(ds, cfg: BuildConfig, specs: list[StageSpec]):
    """Every stage chained in one pool of light CPU workers sized up to the cluster (``num_workers``): the models
    run in their own pools (``engines.pool_ray``), so a worker only prepares requests and reads answers."""
    import ray.data

    from docrerank.core import runtime

    workers = cfg.num_workers or runtime.cluster_cpus()
    return ds.map_batches(ChainStage, fn_constructor_kwargs={"stages": specs}, batch_size=cfg.pages_per_batch,
                          batch_format=batch_format_of(specs), num_cpus=MODEL_FREE_CPUS,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers))


def plan_build_pools(cfg: BuildConfig) -> PoolPlan:
    """The model pools of a build against the cluster joined (no pools, and no look at the cluster, without models)."""
    from docrerank.engines.pool import plan_pools
    from docrerank.engines.pool_ray import cluster_resources

    engines = stage_engines(cfg)
    if not engines:
        return PoolPlan([], ClusterResources([]))
    return plan_pools(engines, cluster_resources(), also_needs=[{"CPU": MODEL_FREE_CPUS}])


def run_build(cfg: BuildConfig) -> dict:
    """Build the dataset into ``cfg.output`` on the current Ray cluster; return stats (also in stats.json)."""
    import ray.data

    from docrerank.build.write import funnel_stats
    from docrerank.core import runtime
    from docrerank.report.card import write_card

    t0 = time.perf_counter()
    plan = plan_build_pools(cfg)  # before the ingest: a cluster that cannot hold the models fails the job now
    if plan.problems:
        raise ValueError("model pools: " + "; ".join(plan.problems))
    for w in plan.waits:
        log.info("model pools: %s", w)
    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    # sources: pages not finished by an earlier run (shards of its unfinished batches are removed first)
    src = resolve_sources(cfg, out)
    orphans = remove_orphans(out, OUTPUT_TABLES, MARKER)
    if orphans:
        log.info("removed %d shards of unfinished batches", orphans)
    empty = remove_empty_shards(out, OUTPUT_TABLES + (("pages",) if src.write_pages else ()))
    if empty:
        log.info("removed %d empty shards an earlier version wrote", empty)
    done = done_pages(out)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # deterministic shards
    ds, limit_ids = read_pages(cfg, src)
    vocab = build_vocabulary(src.pages) if cfg.negatives.engine == "rules" and not cfg.query_pages else {}
    statuses: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        pools = stack.enter_context(ModelPools.start(plan)) if plan.pools else None
        if pools:  # Ray Data plans its workers with what the pools leave
            stack.enter_context(excluded_from_ray_data(**pools.resources()))
        # stages, the write stage last; the write stage emits one status per page
        specs = stage_specs(cfg, vocab, src.given, done, limit_ids, src.write_pages, pools.handles if pools else None)
        batches = chain_stages(ds, cfg, specs).iter_batches(batch_size=256, batch_format="numpy")
        # preserve_order holds every later batch behind the slowest one: the pools are checked on a clock instead
        # (growth, failed requests), not only when a batch comes back
        for batch in iter_checked(batches, pools.check if pools else (lambda: None), every_s=POOL_CHECK_S):
            for s in batch["status"]:
                statuses[s] = statuses.get(s, 0) + 1
        if pools:
            pools.check(final=True)
            pool_stats = pools.summary()
    if statuses.get(UNFINISHED):
        raise RuntimeError(f"{statuses[UNFINISHED]} page(s) not finished: their model requests hit engine failures "
                           f"({', '.join(UNFINISHED_KINDS)}; the pools' log above says which); nothing of them was "
                           f"written, and {sum(statuses.values()) - statuses[UNFINISHED]} page(s) were. Run the same "
                           "command again to complete them")
    # outputs: the funnel is read back from the output
    stats = {"this_run": {"pages": sum(statuses.values()), "status": statuses,
                          "seconds": round(time.perf_counter() - t0, 2), "resumed_pages": len(done)},
             **funnel_stats(out)}
    stats["sources"] = {"pages": src.pages.uri}  # where mining finds the pages (jobs.mine_negatives)
    if pools:
        stats["pools"] = pool_stats
    if src.ingest_stats:
        stats["ingest"] = {k: src.ingest_stats[k] for k in ("documents", "pages", "balanced")}
    runtime.write_json(out.join("stats.json"), stats)
    write_card(out, cfg, stats)
    if cfg.viewer:
        from docrerank.report.viewer import write_viewer_or_warn

        write_viewer_or_warn(cfg.output)
    return stats
