"""Build hard-negative training data: positives, negatives, two-prompt verification, selection, export.

    python -m jobs.build_dataset --config jobs/configs/build_local.yaml [key=value ...]
"""

from __future__ import annotations

from docrerank.build.config import BuildConfig
from docrerank.core.job import Job


def _run(cfg: BuildConfig, progress) -> dict:
    from docrerank.build.run import run_build

    return run_build(cfg)


def _plan(cfg: BuildConfig, res):
    from docrerank.build.plan import plan_build

    return plan_build(cfg, res)


def _report(cfg: BuildConfig, stats: dict) -> str:
    from docrerank.render.books import summary_table
    from docrerank.report.card import attribute_table, funnel_table, pools_table, requests_table

    head = ""
    if stats.get("ingest"):  # the build ran the ingest first: its books, as jobs.ingest prints them
        head = f"\ningest summary for {cfg.output}\n{summary_table(stats['ingest'])}\n"
    models = "".join(f"{t}\n\n" for t in (requests_table(stats), pools_table(stats)) if t)
    return (f"{head}\ndataset build for {cfg.output}\n{funnel_table(stats)}\n\n{attribute_table(stats)}\n\n{models}"
            f"this run: {stats['this_run']['pages']} pages in {stats['this_run']['seconds']}s; "
            f"card: {cfg.output}/card.md, stats: {cfg.output}/stats.json")


def _headline(stats: dict) -> str:
    return f"{stats['groups']} groups ({stats.get('heldout_groups', 0)} held out), " \
           f"{stats['negatives']['kept']} negatives kept of {stats['negatives']['candidates']}"


def _outputs(cfg: BuildConfig) -> tuple[str, list[str]]:
    names = ["examples/", "examples_heldout/", "queries/", "card.md", "stats.json"]
    return cfg.output, names + (["viewer/index.html"] if getattr(cfg, "viewer", False) else [])


JOB = Job(
    name="build_dataset", aliases=("build",), doc=__doc__, config=BuildConfig,
    summary="pages -> hard-negative training data (queries/, examples/, export/, card.md, README.md, viewer/)",
    run=_run, plan=_plan, report=_report, headline=_headline, outputs=_outputs,
)
