"""Evaluate rerankers as the paper does: a first stage retrieves the top-k pages of each query, each reranker
re-sorts them, and NDCG@5 (primary), NDCG@10, Recall@1/5/10 and MRR@10 are reported side by side per dataset and
averaged, with a paired significance test against retrieval alone.

    python -m jobs.evaluate --config jobs/configs/eval_local.yaml [key=value ...]

Datasets: BEIR-layout directories as published for ViDoRe V2 and REAL-MM-RAG (corpus/, queries/, qrels/
Parquet; local or any pyarrow filesystem), or a dataset build's held-out split. Writes <output>/runs/*/*.trec,
metrics.json, report.md and ndcg5.png, and prints the table. No Ray needed; runs on GPU when one is present.
"""

from __future__ import annotations

from docrerank.core.job import Job
from docrerank.eval.config import EvalConfig


def _run(cfg: EvalConfig, progress) -> dict:
    from docrerank.eval.run import run_evaluation

    return run_evaluation(cfg, progress=progress)


def _plan(cfg: EvalConfig, res):
    from docrerank.eval.plan import plan_eval

    return plan_eval(cfg, res)


def _report(cfg: EvalConfig, results: dict) -> str:
    from docrerank.report.evaluation import format_table

    return f"{format_table(results)}\nreport: {results['files']['report']}"


def _headline(results: dict) -> str:
    primary = results.get("primary", "ndcg@5")
    avg = results.get("average") or {}
    parts = [f"{system} {100 * m[primary]:.1f}" for system, m in avg.items() if m.get(primary) is not None]
    return f"{primary}: " + ", ".join(parts)


JOB = Job(
    name="evaluate", aliases=("eval",), doc=__doc__, config=EvalConfig,
    summary="rerankers against a first stage on benchmarks or a build's held-out split",
    run=_run, plan=_plan, report=_report, headline=_headline,
    outputs=lambda cfg: (cfg.output, ["report.md", "metrics.json", "runs/"]),
    needs_ray=lambda cfg: False, errors=(ValueError, RuntimeError, FileNotFoundError, ImportError),
    summarise=lambda r: {"average": r["average"], "files": r.get("files")},
)
