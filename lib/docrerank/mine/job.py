"""Mine document negatives: for each positive (query, page), k pages of the same corpus a first-stage retriever
ranks high (top N, positive excluded, seeded sample), with a false-negative filter (the build's verify prompts).

    python -m jobs.mine_negatives --config jobs/configs/mine_local.yaml [key=value ...]

Writes <output>/mined/ (groups of one query and 1 + k pages, kind=mined, training documents only),
mined_heldout/ (held-out queries mined among held-out documents only), mining_status/ (every input query:
complete, short or skipped, with the reason), _index/ (the retriever index, built once per corpus and split),
mining_stats.json and _meta/. Rerunning with the same output resumes; resume=false recomputes.
"""

from __future__ import annotations

from docrerank.core.job import Job
from docrerank.mine.config import MineConfig


def _run(cfg: MineConfig, progress) -> dict:
    from docrerank.mine.run import run_mine

    return run_mine(cfg)


def _plan(cfg: MineConfig, res):
    from docrerank.mine.plan import plan_mine

    return plan_mine(cfg, res)


def _report(cfg: MineConfig, stats: dict) -> str:
    from docrerank.core.runtime import format_table
    from docrerank.mine.run import summary_rows

    judge = cfg.filter.engine if isinstance(cfg.filter.engine, str) else cfg.filter.engine.model
    return (f"\nmined negatives for {cfg.output} ({cfg.retriever} top {cfg.top_n}, k={cfg.k}, filter {judge})\n"
            f"{format_table(['mine_negatives', 'value'], summary_rows(stats))}\n"
            f"stats: {cfg.output}/mining_stats.json, per query: {cfg.output}/mining_status/")


def _headline(stats: dict) -> str:
    groups = " + ".join(f"{n}" for n in stats["groups"].values())
    return f"{groups} mined groups, {stats['false_negatives_removed']} false negatives removed"


JOB = Job(
    name="mine_negatives", aliases=("mine",), doc=__doc__, config=MineConfig,
    summary="document-mined negatives for a build's positives",
    run=_run, plan=_plan, report=_report, headline=_headline,
    outputs=lambda cfg: (cfg.output, ["mined/", "mined_heldout/", "mining_stats.json"]),
)
