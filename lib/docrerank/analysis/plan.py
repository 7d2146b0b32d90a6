"""``jobs.analyse_negatives --plan`` and its start-of-job checks: the example sets and how many groups are analysed,
the embedder and the optional reranker and where they load from, and the paths. No Ray: this machine.
"""

from __future__ import annotations

from typing import Optional

from docrerank.analysis.config import AnalyseConfig
from docrerank.core.plan import (
    PlanOptions,
    PlanReport,
    Resources,
    fmt_count,
    parquet_rows,
    paths_section,
    resources_section,
)
from docrerank.models.sources import model_source, reranker_source

EXAMPLES_PER_GROUP = 4  # nominal: 1 positive + 3 negatives


def plan_analyse(cfg: AnalyseConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The analysis's plan (see the module doc)."""
    report = PlanReport("analyse_negatives")
    data = report.section("examples", ["examples", "rows", "groups analysed"])
    for path in cfg.examples:
        try:
            rows, _ = parquet_rows(path)
            data.rows.append([path, fmt_count(rows), fmt_count(min(cfg.max_groups, rows // EXAMPLES_PER_GROUP))])
        except Exception as err:  # noqa: BLE001 - reported
            report.problem(f"examples {path}: {type(err).__name__}: {err}")
            data.rows.append([path, "?", "?"])
    models = report.section("models", ["role", "model", "source", "where", "files"])
    sources = [("embedder", model_source(cfg.embedder, key="embedder"))]
    if cfg.reranker:
        sources.append(("reranker", reranker_source(cfg.reranker, key="reranker")))
    for role, src in sources:
        models.rows.append([role, src.name, src.kind, src.where, src.files])
        for p in src.problems:
            report.problem(p)
    device = cfg.device if cfg.device != "auto" else ("cuda" if res.gpus else "cpu")
    resources_section(report, res, 1 if device == "cuda" else 0, 1, what=f"this process on {device}")
    paths_section(report, [("examples", p) for p in cfg.examples], [("output", cfg.output)] if cfg.output else [])
    return report
