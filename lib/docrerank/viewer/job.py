"""Write the dataset viewer of a build output: ``<output>/viewer/index.html``, a static page a browser opens from
disk (no server): page thumbnails, each positive with every negative candidate (attribute, both verifier scores,
verdict, reason; kept ones first), filters by attribute, verdict and page status, and the funnel.

    python -m jobs.view_dataset out/local [pages_per_shard=200 thumb_width=300]
    docrerank view out/local

``jobs.build_dataset`` writes it at the end of every build (``viewer=false`` turns that off); this job writes it
for any existing build output, and rewrites it after a resumed build. No Ray.
"""

from __future__ import annotations

from docrerank.core.job import Job
from docrerank.viewer.config import ViewConfig


def output_first(argv: list[str]) -> list[str]:
    """``view_dataset OUTPUT [key=value ...]``: the first argument, when it is neither a flag nor a key=value, is
    the build output."""
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        return argv[1:] + [f"output={argv[0]}"]
    return argv


def _run(cfg: ViewConfig, progress) -> dict:
    from docrerank.report.viewer import write_viewer

    return write_viewer(cfg.output, cfg.pages_per_shard, cfg.thumb_width, cfg.title)


def _report(cfg: ViewConfig, done: dict) -> str:
    return (f"viewer of {cfg.output}: {done['pages']} pages in {done['shards']} parts, {done['thumbnails']} "
            f"thumbnails ({done['seconds']}s)\nopen {done['index']}")


JOB = Job(
    name="view_dataset", aliases=("view",), doc=__doc__, config=ViewConfig,
    summary="a browsable HTML viewer of a build output (<output>/viewer/index.html)",
    run=_run, report=_report, headline=lambda done: f"{done['pages']} pages",
    outputs=lambda cfg: (cfg.output, ["viewer/index.html"]),
    needs_ray=lambda cfg: False, errors=(ValueError, OSError), argv=output_first,
)
