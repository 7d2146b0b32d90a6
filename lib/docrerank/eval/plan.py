"""``jobs.evaluate --plan`` and the evaluation's start-of-job checks: datasets and their queries, the first stage and
the rerankers and where they load from, the device, reranking calls and GPU time, and the paths. The evaluation
runs in its driver process (no Ray): resources are this machine's.
"""

from __future__ import annotations

from typing import Optional

from docrerank.core import storage
from docrerank.core.plan import (
    PlanOptions,
    PlanReport,
    Resources,
    fmt_count,
    fmt_hours,
    parquet_rows,
    paths_section,
    resources_section,
)
from docrerank.eval.config import EvalConfig
from docrerank.models.plan import model_row, reranker_cost
from docrerank.models.sources import model_source, reranker_source

EXAMPLES_PER_GROUP = 4  # nominal: 1 positive + 3 negatives, for a build's held-out split


def count_queries(path: str, fmt: str, split: Optional[str] = None) -> tuple[Optional[int], str]:
    """(queries of a dataset, how counted): footers of the BEIR queries table the loader would read, or the rows of
    a build's held-out (or train) examples / 4."""
    import pyarrow.parquet as pq

    from docrerank.eval.beir import _table_files

    root = storage.resolve(path)
    if fmt == "build" or (fmt == "auto" and (storage.exists(root.join("examples_heldout"))
                                             or storage.exists(root.join("examples")))):
        rows, _ = parquet_rows(root.join("examples" if split == "train" else "examples_heldout").uri)
        return rows // EXAMPLES_PER_GROUP, f"{split or 'heldout'} examples / 4 (estimate)"
    files = _table_files(root, "queries", split)
    rows = 0
    for f in files:
        with root.fs.open_input_file(f) as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    return rows, f"rows of {len(files)} queries file(s) (all languages)"


def plan_eval(cfg: EvalConfig, res: Resources, opts: Optional[PlanOptions] = None) -> PlanReport:
    """The evaluation's plan (see the module doc)."""
    opts = opts or cfg.plan
    report = PlanReport("evaluate")
    data = report.section("datasets", ["dataset", "path", "queries", "counted"])
    total = 0
    for d in cfg.datasets:
        try:
            n, how = count_queries(d.path, d.format, d.split)
        except Exception as err:  # noqa: BLE001 - reported
            report.problem(f"dataset {d.path}: {type(err).__name__}: {err}")
            n, how = None, "not counted"
        if n is not None and cfg.max_queries:
            n = min(n, cfg.max_queries)
        total += n or 0
        data.rows.append([d.name or d.path.rstrip("/").rsplit("/", 1)[-1], d.path, fmt_count(n), how])

    device = cfg.device if cfg.device != "auto" else ("cuda" if res.gpus else "cpu")
    models = report.section("models", ["model", "source", "where", "files", "gated"])
    gpu_need = 0
    if cfg.first_stage.kind == "colpali":
        src = model_source(cfg.first_stage.model or "", key="first_stage.model")
        models.rows.append(model_row(src))
        for p in src.problems:
            report.problem(p)
        gpu_need = 1
    stages = report.section("stages", ["stage", "model", "pairs", "GPU-h"])
    stages.rows.append([f"first stage: {cfg.first_stage.kind}", cfg.first_stage.model or "", "", ""])
    for i, r in enumerate(cfg.rerankers):
        src = reranker_source(r.path, key=f"rerankers[{i}].path")
        models.rows.append(model_row(src))
        for p in src.problems:
            report.problem(p)
        pairs = total * cfg.first_stage.top_k
        gpu_s, source = reranker_cost(r.path, pairs, device, opts)
        stages.rows.append([f"rerank: {r.name or r.path}", r.path, fmt_count(pairs), fmt_hours(gpu_s)])
        stages.notes.append(f"{r.name or r.path}: {source}")
    if cfg.rerankers and device == "cuda":
        gpu_need = 1
    resources_section(report, res, gpu_need, 1, what=f"the driver process on {device}")
    reads = [("dataset", d.path) for d in cfg.datasets] + [("run_file", d.run_file) for d in cfg.datasets if d.run_file]
    paths_section(report, reads, [("output", cfg.output)])
    return report
