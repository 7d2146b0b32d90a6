"""Score (query, candidate page) pairs from Parquet with a reranker: Ray Data over GPU (or CPU) actors, resumable.

    python -m jobs.rerank --config jobs/configs/rerank_local.yaml [key=value ...]

Input rows: a query column, a page id column and the page inline (image / text) or looked up in a pages table.
Writes <output>/scores/*.parquet (query_id, query, page_id, score, rank, error, kept columns) and
rerank_stats.json; a rerun scores only the row groups not done yet (resume=false: all again).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.rerank.config import RerankConfig

    cfg, ns = parse_job_args(RerankConfig, argv, prog="python -m jobs.rerank", description=__doc__)
    from docrerank.core import plan, runtime
    from docrerank.rerank.run import run_rerank
    from docrerank.rerank.plan import plan_rerank

    def make_plan():
        return plan_rerank(cfg, plan.detect_resources(ns.address))

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()

    def work():
        runtime.init_ray(ns.address)
        runtime.configure_ray_data(progress=False)
        return run_rerank(cfg)

    summary = runtime.run_job("rerank", cfg, work, checks=plan.start_checks(make_plan))
    if summary is None:
        return 1
    print(runtime.format_table(["rerank", "value"], [[k, v] for k, v in summary.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
