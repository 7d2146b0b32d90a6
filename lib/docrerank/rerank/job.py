"""Score (query, candidate page) pairs from Parquet with a reranker: Ray Data over GPU (or CPU) actors, resumable.

    python -m jobs.rerank --config jobs/configs/rerank_local.yaml [key=value ...]

Input rows: a query column, a page id column and the page inline (image / text) or looked up in a pages table.
Writes <output>/scores/*.parquet (query_id, query, page_id, score, rank, error, kept columns) and
rerank_stats.json; a rerun scores only the row groups not done yet (resume=false: all again).
"""

from __future__ import annotations

from docrerank.core.job import Job
from docrerank.rerank.config import RerankConfig


def _run(cfg: RerankConfig, progress) -> dict:
    from docrerank.rerank.run import run_rerank

    return run_rerank(cfg)


def _plan(cfg: RerankConfig, res):
    from docrerank.rerank.plan import plan_rerank

    return plan_rerank(cfg, res)


def _report(cfg: RerankConfig, summary: dict) -> str:
    from docrerank.core.runtime import format_table

    return format_table(["rerank", "value"], [[k, v] for k, v in summary.items()])


JOB = Job(
    name="rerank", doc=__doc__, config=RerankConfig, summary="score (query, page) pairs from Parquet",
    run=_run, plan=_plan, report=_report,
    outputs=lambda cfg: (cfg.output, ["scores/", "rerank_stats.json"]), progress=False,
)
