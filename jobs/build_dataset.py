"""Build hard-negative training data: positives, negatives, two-prompt verification, selection, export.

    python -m jobs.build_dataset --config jobs/configs/build_local.yaml [key=value ...]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from docrerank.core.config import parse_job_args
    from docrerank.build.config import BuildConfig

    cfg, ns = parse_job_args(BuildConfig, argv, prog="python -m jobs.build_dataset", description=__doc__)
    from docrerank.core import runtime
    from docrerank.build.card import attribute_table, funnel_table
    from docrerank.build.run import run_build

    runtime.setup_logging()
    runtime.init_ray(ns.address)
    runtime.configure_ray_data()
    try:
        stats = run_build(cfg)
    except (ValueError, RuntimeError) as e:
        print(f"build_dataset failed: {e}", file=sys.stderr)
        return 1
    print(f"\ndataset build for {cfg.output}\n{funnel_table(stats)}\n\n{attribute_table(stats)}\n")
    print(f"this run: {stats['this_run']['pages']} pages in {stats['this_run']['seconds']}s; "
          f"card: {cfg.output}/card.md, stats: {cfg.output}/stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
