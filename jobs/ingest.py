"""Render PDFs and images into the pages table (and quarantine what cannot be rendered).

    python -m jobs.ingest input=path/to/pdfs output=out/ingest [render.dpi=144 ...]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from docrerank.core.config import parse_job_args
    from docrerank.ingest.config import IngestConfig

    cfg, ns = parse_job_args(IngestConfig, argv, prog="python -m jobs.ingest", description=__doc__)
    from docrerank.core import runtime
    from docrerank.ingest.run import run_ingest

    runtime.setup_logging()
    runtime.init_ray(ns.address)
    runtime.configure_ray_data()
    try:
        run_ingest(cfg)
    except (ValueError, RuntimeError) as e:
        print(f"ingest failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
