"""Evaluate rerankers as the paper does: a first stage retrieves the top-k pages of each query, each reranker
re-sorts them, and NDCG@5 (primary), NDCG@10, Recall@1/5/10 and MRR@10 are reported side by side per dataset and
averaged, with a paired significance test against retrieval alone.

    python -m jobs.evaluate --config jobs/configs/eval_local.yaml [key=value ...]

Datasets: BEIR-layout directories as published for ViDoRe V2 and REAL-MM-RAG (corpus/, queries/, qrels/
Parquet; local or any pyarrow filesystem), or a dataset build's held-out split. Writes <output>/runs/*/*.trec,
metrics.json, report.md and ndcg5.png, and prints the table. No Ray needed; runs on GPU when one is present.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job with ``argv`` (default: the command line); return the exit status."""
    from docrerank.core.config import parse_job_args
    from docrerank.eval.config import EvalConfig

    cfg, ns = parse_job_args(EvalConfig, argv, prog="python -m jobs.evaluate", description=__doc__)
    from docrerank.core import plan, runtime
    from docrerank.eval.plan import plan_eval
    from docrerank.report.evaluation import format_table
    from docrerank.eval.run import run_evaluation

    def make_plan():
        return plan_eval(cfg, plan.local_resources())

    if ns.plan:
        return plan.print_plan(make_plan())
    runtime.setup_logging()
    results = runtime.run_job("evaluate", cfg, lambda: run_evaluation(cfg, progress=print),
                              summarise=lambda r: {"average": r["average"], "files": r.get("files")},
                              errors=(ValueError, RuntimeError, FileNotFoundError, ImportError),
                              checks=plan.start_checks(make_plan))
    if results is None:
        return 1
    print(format_table(results))
    print(f"report: {results['files']['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
