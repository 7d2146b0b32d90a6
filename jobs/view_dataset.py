"""Write the dataset viewer of a build output: ``<output>/viewer/index.html``, a static page a browser opens from
disk (no server): page thumbnails, each positive with every negative candidate (attribute, both verifier scores,
verdict, reason; kept ones first), filters by attribute, verdict and page status, and the funnel.

    python -m jobs.view_dataset out/local [pages_per_shard=200 thumb_width=300]
    docrerank view out/local

``jobs.build_dataset`` writes it at the end of every build (``viewer=false`` turns that off); this job writes it
for any existing build output, and rewrites it after a resumed build. No Ray.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.viewer.config import ViewConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):  # `view_dataset OUTPUT`: the build output
        argv = argv[1:] + [f"output={argv[0]}"]
    cfg, _ = parse_job_args(ViewConfig, argv, prog="python -m jobs.view_dataset", description=__doc__)
    from docrerank.core import runtime
    from docrerank.report.viewer import write_viewer

    runtime.setup_logging()
    done = runtime.run_job("view_dataset", cfg, lambda: write_viewer(cfg.output, cfg.pages_per_shard, cfg.thumb_width,
                                                                     cfg.title), errors=(ValueError, OSError))
    if done is None:
        return 1
    print(f"viewer of {cfg.output}: {done['pages']} pages in {done['shards']} parts, {done['thumbnails']} thumbnails "
          f"({done['seconds']}s)\nopen {done['index']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
