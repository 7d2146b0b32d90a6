"""Run the whole pipeline, or a contiguous part of it, from one config: ingest -> build -> mine -> analyse -> train
-> evaluate, on one Ray instance, and end with one summary of every step and output.

    python -m jobs.pipeline --config jobs/configs/pipeline_local.yaml [key=value ...]
    docrerank pipeline --config jobs/configs/pipeline_local.yaml build.select.k=4 rerun=[train]

Each step is the job of the same name with its own config (``build: {config: jobs/configs/build_local.yaml}``, keys
beside ``config`` override the file's). A rerun skips every step that finished with the same config and inputs
(``<output>/_meta/pipeline-<step>.json``); a changed step runs again, and so does every step after it.
``--plan`` prints every step's plan (problems of a step whose inputs an earlier step writes wait for that step).
"""

from __future__ import annotations

import sys
from dataclasses import asdict


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.pipeline.config import PipelineConfig

    cfg, ns = parse_job_args(PipelineConfig, argv, prog="python -m jobs.pipeline", description=__doc__)
    from docrerank.core import runtime
    from docrerank.pipeline.run import plan_pipeline, run_pipeline, summary_table

    if ns.plan:
        text, ok = plan_pipeline(cfg, ns.address)
        print(text)
        return 0 if ok else 1
    runtime.setup_logging()

    def echo(text: str) -> None:  # each step's report, as its job prints it, after one blank line
        print(f"\n{text.lstrip(chr(10))}", flush=True)

    results = runtime.run_job("pipeline", cfg, lambda: run_pipeline(cfg, ns.address, echo=echo),
                              summarise=lambda rs: [asdict(r) for r in rs])
    if results is None:
        return 1
    print(f"\npipeline summary ({ns.config or 'command-line config'})\n{summary_table(results)}")
    return 0 if all(r.status in ("ran", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
