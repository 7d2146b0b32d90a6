"""Build hard-negative training data: positives, negatives, two-prompt verification, selection, export.

    python -m jobs.build_dataset --config jobs/configs/build_local.yaml [key=value ...]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.build.config import BuildConfig
    from docrerank.core.config import parse_job_args

    cfg, ns = parse_job_args(BuildConfig, argv, prog="python -m jobs.build_dataset", description=__doc__)
    from docrerank.report.card import attribute_table, funnel_table
    from docrerank.build.plan import plan_build
    from docrerank.build.run import run_build
    from docrerank.core import plan, runtime
    from docrerank.render.books import summary_table

    def make_plan():
        return plan_build(cfg, plan.detect_resources(ns.address))

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()

    def work():
        runtime.init_ray(ns.address)
        runtime.configure_ray_data()
        return run_build(cfg)

    stats = runtime.run_job("build_dataset", cfg, work, checks=plan.start_checks(make_plan))
    if stats is None:
        return 1
    if stats.get("ingest"):  # the build ran the ingest first: its books, as jobs.ingest prints them
        print(f"\ningest summary for {cfg.output}\n{summary_table(stats['ingest'])}")
    print(f"\ndataset build for {cfg.output}\n{funnel_table(stats)}\n\n{attribute_table(stats)}\n")
    print(f"this run: {stats['this_run']['pages']} pages in {stats['this_run']['seconds']}s; "
          f"card: {cfg.output}/card.md, stats: {cfg.output}/stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
