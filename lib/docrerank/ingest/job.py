"""Render PDFs and images into the pages table (and quarantine what cannot be rendered).

    python -m jobs.ingest input=path/to/pdfs output=out/ingest [render.dpi=144 ...]
"""

from __future__ import annotations

from docrerank.core.job import Job
from docrerank.render.config import IngestConfig


def _run(cfg: IngestConfig, progress) -> dict:
    from docrerank.render.run import run_ingest

    return run_ingest(cfg)


def _plan(cfg: IngestConfig, res):
    from docrerank.render.plan import plan_ingest

    return plan_ingest(cfg, res)


def _report(cfg: IngestConfig, stats: dict) -> str:
    from docrerank.core import storage
    from docrerank.render.books import summary_table

    run = stats["this_run"]
    return (f"\ningest summary for {cfg.output}\n{summary_table(stats)}\n\n"
            f"this run: {run['pages_rendered']} pages rendered in {run['render_seconds']:.1f}s on {run['workers']} "
            f"workers; stats: {storage.resolve(cfg.output).join('ingest_stats.json').uri}")


def _headline(stats: dict) -> str:
    d, p = stats["documents"], stats["pages"]
    return f"{p.get('written', 0)} pages of {d.get('written', 0)} documents; books balance: " \
           f"{'yes' if stats.get('balanced') else 'NO'}"


JOB = Job(
    name="ingest", summary="PDFs and images -> pages/ (and quarantine/)", doc=__doc__, config=IngestConfig,
    run=_run, plan=_plan, report=_report, headline=_headline,
    outputs=lambda cfg: (cfg.output, ["pages/", "quarantine/", "ingest_stats.json"]),
)
