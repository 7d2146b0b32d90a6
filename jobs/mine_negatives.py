"""Mine document negatives: for each positive (query, page), k pages of the same corpus a first-stage retriever
ranks high (top N, positive excluded, seeded sample), with a false-negative filter (the build's verify prompts).

    python -m jobs.mine_negatives --config jobs/configs/mine_local.yaml [key=value ...]

Writes <output>/mined/ (groups of one query and 1 + k pages, kind=mined, training documents only),
mined_heldout/ (held-out queries mined among held-out documents only), mining_status/ (every input query:
complete, short or skipped, with the reason), _index/ (the retriever index, built once per corpus and split),
mining_stats.json and _meta/. Rerunning with the same output resumes; resume=false recomputes.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.mine.config import MineConfig

    cfg, ns = parse_job_args(MineConfig, argv, prog="python -m jobs.mine_negatives", description=__doc__)
    from docrerank.core import plan, runtime
    from docrerank.mine.plan import plan_mine
    from docrerank.mine.run import run_mine, summary_rows

    def make_plan():
        return plan_mine(cfg, plan.detect_resources(ns.address))

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()

    def work():
        runtime.init_ray(ns.address)
        runtime.configure_ray_data()
        return run_mine(cfg)

    stats = runtime.run_job("mine_negatives", cfg, work, checks=plan.start_checks(make_plan))
    if stats is None:
        return 1
    print(f"\nmined negatives for {cfg.output} ({cfg.retriever} top {cfg.top_n}, k={cfg.k}, filter "
          f"{cfg.filter.engine if isinstance(cfg.filter.engine, str) else cfg.filter.engine.model})")
    print(runtime.format_table(["mine_negatives", "value"], summary_rows(stats)))
    print(f"stats: {cfg.output}/mining_stats.json, per query: {cfg.output}/mining_status/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
