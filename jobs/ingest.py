"""Render PDFs and images into the pages table (and quarantine what cannot be rendered).

    python -m jobs.ingest input=path/to/pdfs output=out/ingest [render.dpi=144 ...]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.render.config import IngestConfig

    cfg, ns = parse_job_args(IngestConfig, argv, prog="python -m jobs.ingest", description=__doc__)
    from docrerank.core import plan, runtime, storage
    from docrerank.render.books import summary_table
    from docrerank.render.plan import plan_ingest
    from docrerank.render.run import run_ingest

    def make_plan():
        return plan_ingest(cfg, plan.detect_resources(ns.address))

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()

    def work():
        runtime.init_ray(ns.address)
        runtime.configure_ray_data()
        return run_ingest(cfg)

    stats = runtime.run_job("ingest", cfg, work, checks=plan.start_checks(make_plan))
    if stats is None:
        return 1
    run = stats["this_run"]
    print(f"\ningest summary for {cfg.output}\n{summary_table(stats)}\n")
    print(f"this run: {run['pages_rendered']} pages rendered in {run['render_seconds']:.1f}s on {run['workers']} "
          f"workers; stats: {storage.resolve(cfg.output).join('ingest_stats.json').uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
