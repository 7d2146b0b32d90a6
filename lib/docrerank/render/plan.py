"""``jobs.ingest --plan`` and the ingest's start-of-job checks; ``count_input_pages`` (also used by the build's plan).

Pages are counted without rendering: ``sample:`` from the corpus's known size, images as one page each, PDFs
by opening them with PyMuPDF in the driver until ``plan.count_timeout_s`` (the rest estimated from the pages
per PDF seen so far), or ``plan.input_pages`` when given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from docrerank.core import storage
from docrerank.core.plan import PlanOptions, PlanReport, Resources, fmt_count, paths_section, resources_section
from docrerank.render.config import IngestConfig

# Measured on 2 CPUs (bench/results/ingest_pages_per_s.json): 144 dpi, 1024-token pixel cap, PNG.
RENDER_PAGES_PER_S_PER_CPU = 33.5  # steady state per CPU on 2 CPUs, 5,142 real and sample pages
SAMPLE_PAGES_PER_REPORT = 4
SAMPLE_EXTRA_PAGES = 1  # the one-page encrypted board pack (the empty upload has none)


@dataclass
class PageCount:
    """The input's pages (``None`` when they cannot be counted), its files, and how the count was made."""

    pages: Optional[int]
    files: Optional[int]
    how: str
    problem: Optional[str] = None


def _pdf_pages(uri: str) -> int:
    import pymupdf

    loc = storage.resolve(uri)
    with pymupdf.open(stream=storage.read_bytes(loc), filetype="pdf") as doc:
        return doc.page_count


def count_input_pages(spec: str, suffixes: list[str], opts: PlanOptions) -> PageCount:
    """Pages of an ingest input (see the module doc); never raises for bad files (they count 0, as quarantine)."""
    from docrerank.render.inputs import list_inputs
    from docrerank.render.sample_corpus import FAMILIES, LOCAL_YEARS, SAMPLE_PREFIX, YEARS

    if opts.input_pages is not None:
        return PageCount(opts.input_pages, None, "configured (plan.input_pages)")
    if spec.startswith(SAMPLE_PREFIX):
        rest = spec[len(SAMPLE_PREFIX):]  # sample:N: N companies over YEARS; sample: the local edition
        reports = int(rest) * len(YEARS) if rest else sum(len(pair) for pair, _ in FAMILIES) * len(LOCAL_YEARS)
        return PageCount(reports * SAMPLE_PAGES_PER_REPORT + SAMPLE_EXTRA_PAGES, reports + 2, "sample corpus (known size)")
    try:
        uris = list_inputs(spec, suffixes)
    except Exception as err:  # noqa: BLE001 - a missing bucket, credentials: the plan's problem, not a crash
        return PageCount(None, None, "not counted", f"input {spec!r}: {type(err).__name__}: {err}")
    if not uris:
        return PageCount(0, 0, "no input files", f"input {spec!r}: no files ending in {suffixes}")
    t0, pages, seen, pdfs = time.monotonic(), 0, 0, 0
    for uri in uris:
        if time.monotonic() - t0 > opts.count_timeout_s:
            break
        seen += 1
        if not uri.lower().endswith(".pdf"):
            pages += 1
            continue
        pdfs += 1
        try:
            pages += _pdf_pages(uri)
        except Exception:  # noqa: BLE001 - unreadable files are quarantined by the ingest: 0 pages here
            pass
    if seen == len(uris):
        return PageCount(pages, len(uris), f"counted with PyMuPDF in {time.monotonic() - t0:.1f}s")
    per_file = pages / max(seen, 1)
    total = round(pages + per_file * (len(uris) - seen))
    return PageCount(total, len(uris), f"estimate: {seen} of {len(uris)} files opened in {opts.count_timeout_s:g}s "
                                       f"(plan.count_timeout_s), {per_file:.1f} pages per file")


def plan_ingest(cfg: IngestConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The ingest's plan: input files and pages, the render pool against the cluster, paths, render time."""
    opts = opts or getattr(cfg, "plan", None) or PlanOptions()
    report = PlanReport("ingest")
    count = count_input_pages(cfg.input, cfg.suffixes, opts)
    if count.problem:
        report.problem(count.problem)
    workers = cfg.num_workers or max(1, int(res.cpu_capacity))  # an autoscaler adds the CPU nodes (ingest/run.py)
    sec = report.section("input", ["input", "files", "pages", "counted"])
    sec.rows.append([cfg.input, fmt_count(count.files), fmt_count(count.pages), count.how])
    render_s = (count.pages or 0) / (RENDER_PAGES_PER_S_PER_CPU * workers)
    stages = report.section("stages", ["stage", "actors", "CPUs/actor", "GPUs/actor", "wall (est.)"])
    stages.rows.append(["probe + render", workers, 1, 0, f"{render_s / 60:.1f} min"])
    stages.notes.append(f"render rate {RENDER_PAGES_PER_S_PER_CPU} pages/s per CPU (measured: "
                        "bench/results/ingest_pages_per_s.json, 2 CPUs, PNG at the default size)")
    resources_section(report, res, 0, workers, what=f"{workers} render actors of 1 CPU (num_workers)")
    paths_section(report, [], [("output", cfg.output)])  # the count listed the input (or said why it cannot)
    return report
