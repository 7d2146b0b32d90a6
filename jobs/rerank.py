"""Score (query, candidate page) pairs from Parquet with a reranker: Ray Data over GPU (or CPU) actors, resumable.

    python -m jobs.rerank --config jobs/configs/rerank_local.yaml [key=value ...] [--fresh]

Input rows: a query column, a page id column and the page inline (image / text) or looked up in a pages table.
Writes <output>/scores/*.parquet (query_id, query, page_id, score, rank, error, kept columns) and
rerank_stats.json; a rerun scores only the row groups not done yet.
"""

from __future__ import annotations

import datetime as _dt
import sys


def main(argv: list[str] | None = None) -> int:
    from docrerank.config import parse_job_args
    from docrerank.eval.config import RerankConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    fresh = "--fresh" in argv
    if fresh:
        argv.remove("--fresh")
    cfg, ns = parse_job_args(RerankConfig, argv, prog="python -m jobs.rerank", description=__doc__)
    from docrerank import runtime, storage
    from docrerank.rerank_job import run_rerank

    runtime.setup_logging()
    out = storage.resolve(cfg.output)
    meta = runtime.run_metadata("rerank", cfg)
    runtime.write_run_metadata(out, meta)
    try:
        runtime.init_ray(ns.address)
        runtime.configure_ray_data(progress=False)
        summary = run_rerank(cfg, fresh=fresh)
    except (ValueError, RuntimeError) as e:
        print(f"rerank failed: {e}", file=sys.stderr)
        return 1
    meta.update(finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), summary=summary)
    runtime.write_run_metadata(out, meta)
    print(runtime.format_table(["rerank", "value"], [[k, v] for k, v in summary.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
