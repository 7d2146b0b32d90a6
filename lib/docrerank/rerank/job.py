"""Batch reranking: (query, candidate page) pairs from Parquet in, scores out, over a pool of Ray actors (one GPU
each, or CPU), resumable.

A task is one row group of one input file. Each actor loads the reranker once, reads its task's rows (and, when
the pages are not inline, those pages from ``pages``: only the row groups that hold them, found in the page index
the driver builds once from the pages' ``page_id`` column, since hashed ids defeat row-group statistics), scores them and writes ``scores/<file>-rg<k>.parquet``
atomically: the input columns asked for plus ``query_id``, ``score`` (float32), ``rank`` (1 = best within the
query's candidates in that row group) and ``error`` (why a pair could not be scored; its score is null). A rerun
skips the tasks whose output exists. Every input row is in the output: the summary checks the counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Optional

from docrerank.core import storage
from docrerank.core.job import Job
from docrerank.rerank.config import RerankConfig

log = logging.getLogger(__name__)

PAGE_COLUMNS = ("image", "image_format", "text")


def plan_tasks(cfg: RerankConfig) -> list[dict]:
    """One task per (input file, row group), in file order, with its output file name."""
    import pyarrow.parquet as pq

    loc = storage.resolve(cfg.input)
    files = [loc.path] if loc.path.endswith(".parquet") else storage.list_files(loc, suffixes=(".parquet",))
    if not files:
        raise ValueError(f"input: no Parquet files in {cfg.input!r}")
    tasks = []
    for f in files:
        pf = pq.ParquetFile(f, filesystem=loc.fs)
        names = pf.schema_arrow.names
        missing = [c for c in (cfg.query_column, cfg.page_id_column) if c not in names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing} (see query_column / page_id_column)")
        if not any(c in names for c in ("image", "text")) and not cfg.pages:
            raise ValueError(f"{f}: no inline page (image/text columns) and no `pages` table to look page ids up in")
        stem = hashlib.sha1(f.encode()).hexdigest()[:8] + "-" + f.rsplit("/", 1)[-1].removesuffix(".parquet")
        for rg in range(pf.num_row_groups):
            tasks.append({"file": f, "row_group": rg, "rows": pf.metadata.row_group(rg).num_rows,
                          "out": f"{stem}-rg{rg:05d}.parquet"})
    return tasks


def page_index(pages: str) -> dict:
    """Where each page of the ``pages`` table is: ``{"files": [...], "index": Table(page_id, file, row_group)}``,
    read from the ``page_id`` column only (each task then reads only the row groups holding its pages)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loc = storage.resolve(pages)
    files = [loc.path] if loc.path.endswith(".parquet") else storage.list_files(loc, suffixes=(".parquet",))
    parts = []
    for i, f in enumerate(files):
        pf = pq.ParquetFile(f, filesystem=loc.fs)
        if "page_id" not in pf.schema_arrow.names:
            raise ValueError(f"pages: {f} has no page_id column")
        for rg in range(pf.num_row_groups):
            ids = pf.read_row_group(rg, columns=["page_id"]).column(0).cast(pa.string())
            n = len(ids)
            parts.append(pa.table({"page_id": ids, "file": pa.array([i] * n, pa.int32()),
                                   "row_group": pa.array([rg] * n, pa.int32())}))
    schema = pa.schema([("page_id", pa.string()), ("file", pa.int32()), ("row_group", pa.int32())])
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    return {"files": files, "index": table}


def query_ids(rows: list[dict], cfg: RerankConfig) -> list[str]:
    """Each row's query id: the configured/``query_id`` column, else a hash of the query text."""
    col = cfg.query_id_column or ("query_id" if rows and "query_id" in rows[0] else None)
    if col:
        return [str(r[col]) for r in rows]
    return ["q" + hashlib.sha1(str(r[cfg.query_column]).encode()).hexdigest()[:16] for r in rows]


def ranks(qids: list[str], scores: list[Optional[float]], page_ids: list[str]) -> list[Optional[int]]:
    """1-based rank of each row among its query's rows (score desc, page id asc; unscored rows: None)."""
    by_q: dict[str, list[int]] = {}
    for i, q in enumerate(qids):
        if scores[i] is not None:
            by_q.setdefault(q, []).append(i)
    out: list[Optional[int]] = [None] * len(qids)
    for idx in by_q.values():
        for r, i in enumerate(sorted(idx, key=lambda i: (-scores[i], page_ids[i] or "")), start=1):
            out[i] = r
    return out


class ScoreActor:
    """Loads the reranker once; scores one task (a row group) per call and writes its output file."""

    def __init__(self, cfg_json: str, device: str, pages_index: Optional[dict] = None):
        from docrerank.models.reranker import Reranker

        self.cfg = RerankConfig.model_validate_json(cfg_json)
        self.pages_index = pages_index
        r = self.cfg.reranker
        self.reranker = Reranker.load(r.path, device=device, dtype=self.cfg.dtype, batch_size=r.batch_size,
                                      max_pixels=r.max_pixels, max_seq_len=r.max_seq_len)
        self.out = storage.resolve(self.cfg.output).join("scores")

    def _pages(self, ids: list[str]) -> tuple[dict[str, dict], int]:
        """(pages looked up by id in ``cfg.pages``, only those asked for; rows of the pages table read): only the row
        groups the page index names for ``ids`` are read."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not ids:
            return {}, 0

        loc = storage.resolve(self.cfg.pages)
        if self.pages_index is None:
            self.pages_index = page_index(self.cfg.pages)
        files, index = self.pages_index["files"], self.pages_index["index"]
        wanted = pa.array(sorted(set(ids)), pa.string())
        hits = index.filter(pc.is_in(index["page_id"], value_set=wanted))
        groups = sorted(set(zip(hits["file"].to_pylist(), hits["row_group"].to_pylist())))
        found: dict[str, dict] = {}
        read = 0
        opened: dict[int, Any] = {}
        for fi, rg in groups:
            pf = opened.get(fi) or opened.setdefault(fi, pq.ParquetFile(files[fi], filesystem=loc.fs))
            cols = ["page_id"] + [c for c in PAGE_COLUMNS if c in pf.schema_arrow.names]
            t = pf.read_row_group(rg, columns=cols)
            read += t.num_rows
            t = t.filter(pc.is_in(t["page_id"].cast(pa.string()), value_set=wanted))
            found.update({str(r["page_id"]): r for r in t.to_pylist()})
        return found, read

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        done = []
        for task in (json.loads(t) for t in batch["task"]):
            done.append(self.score_task(task))
        return {"summary": np.array([json.dumps(d) for d in done], dtype=object)}

    def score_task(self, task: dict) -> dict:
        """Score one row group and write its shard atomically; returns the task's counts."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        cfg = self.cfg
        loc = storage.resolve(cfg.input)
        rows = pq.ParquetFile(task["file"], filesystem=loc.fs).read_row_group(task["row_group"]).to_pylist()
        pids = [None if r[cfg.page_id_column] is None else str(r[cfg.page_id_column]) for r in rows]
        qids = query_ids(rows, cfg)
        inline = rows and any(r.get("image") is not None or r.get("text") for r in rows)
        found, page_rows_read = ({}, 0) if inline else self._pages([p for p in pids if p is not None])
        errors: list[Optional[str]] = [None] * len(rows)
        pages, keep = [], []
        for i, (r, pid) in enumerate(zip(rows, pids)):
            page = ({"page_id": pid, **{c: r.get(c) for c in PAGE_COLUMNS}} if inline else found.get(pid))
            query = r.get(cfg.query_column)
            if pid is None:
                errors[i] = "no_page_id"
            elif page is None:
                errors[i] = "page_not_found"
            elif not query or not str(query).strip():
                errors[i] = "empty_query"
            elif self.reranker.backbone == "vlm" and page.get("image") is None:
                errors[i] = "no_image"
            else:
                pages.append(page)
                keep.append(i)
        scores: list[Optional[float]] = [None] * len(rows)
        if keep:
            values = self.reranker.score([str(rows[i][cfg.query_column]) for i in keep], pages)
            for i, v in zip(keep, values):
                if v != v:  # NaN: the image could not be decoded
                    errors[i] = "unreadable_image"
                else:
                    scores[i] = float(v)
        out = {"query_id": qids, "query": [r.get(cfg.query_column) for r in rows], "page_id": pids,
               "score": pa.array(scores, pa.float32()), "rank": pa.array(ranks(qids, scores, pids), pa.int32()),
               "error": errors}
        for c in cfg.keep_columns:
            out[c] = [r.get(c) for r in rows]
        storage.write_table_atomic(self.out.join(task["out"]), pa.table(out))
        return {"out": task["out"], "rows": len(rows), "scored": sum(s is not None for s in scores),
                "errors": sum(e is not None for e in errors), "page_rows_read": page_rows_read,
                "seconds": round(time.perf_counter() - t0, 3)}


def check_actors_fit(actors: int, bundle: dict) -> None:
    """ValueError with the numbers when the cluster (and its autoscaler, as far as known) cannot hold ``actors``
    scoring actors of ``bundle`` each: Ray Data would wait for them forever."""
    from docrerank.engines.pool import plan_pools
    from docrerank.engines.pool_ray import cluster_resources

    plan = plan_pools({}, cluster_resources(), also_needs=[bundle] * actors,
                      also_label=f"{actors} scoring actor(s) (num_actors, cpus_per_actor, a GPU each on cuda)")
    if plan.problems:
        raise ValueError("rerank: " + "; ".join(plan.problems))


def run_rerank(cfg: RerankConfig) -> dict:
    """Score every input row group not scored yet; returns the summary (rows in = rows out is checked)."""
    import pyarrow.parquet as pq
    import ray

    from docrerank.core.runtime import cluster_cpus

    tasks = plan_tasks(cfg)
    out = storage.resolve(cfg.output).join("scores")
    storage.makedirs(out)
    done_files = {f.rsplit("/", 1)[-1] for f in storage.list_files(out, suffixes=(".parquet",))}
    todo = tasks if not cfg.resume else [t for t in tasks if t["out"] not in done_files]
    from docrerank.core.plan import detect_resources

    res = detect_resources()
    from docrerank.rerank.plan import choose_device, reranker_backbone

    device, why = choose_device(cfg.device, res, reranker_backbone(cfg.reranker.path) if cfg.device == "auto"
                                else None)
    if why:
        log.warning("rerank: %s", why)
    gpus = int(res.gpus or res.max_gpus or 0)
    actors = cfg.num_actors or (max(1, gpus) if device == "cuda" else 1)
    actors = max(1, min(actors, len(todo) or 1))
    check_actors_fit(actors, {"CPU": cfg.cpus_per_actor, **({"GPU": 1} if device == "cuda" else {})})
    log.info("rerank: %d tasks, %d to do, %d %s actor(s) (%d CPUs in the cluster)", len(tasks), len(todo), actors,
             device, cluster_cpus())
    t0 = time.perf_counter()
    results = []
    if todo:
        index = page_index(cfg.pages) if cfg.pages else None  # once, for every task's row-group lookup
        ds = ray.data.from_items([{"task": json.dumps(t)} for t in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(ScoreActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=1 if device == "cuda" else 0, num_cpus=cfg.cpus_per_actor,
                            fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "device": device,
                                                   "pages_index": index})
        results = [json.loads(r["summary"]) for r in ds.take_all()]
    rows_in = sum(t["rows"] for t in tasks)
    rows_out, scored, errors = 0, 0, 0
    for f in storage.list_files(out, suffixes=(".parquet",)):
        if f.rsplit("/", 1)[-1] in {t["out"] for t in tasks}:
            t = pq.read_table(f, columns=["score", "error"], filesystem=out.fs)
            rows_out += t.num_rows
            scored += t.num_rows - t.column("score").null_count
            errors += t.num_rows - t.column("error").null_count
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "tasks": len(tasks), "tasks_run": len(results), "tasks_reused": len(tasks) - len(todo), "rows_in": rows_in,
        "rows_out": rows_out, "scored": scored, "errors": errors, "device": device, "actors": actors,
        "page_rows_read": sum(r.get("page_rows_read", 0) for r in results),
        **({"device_note": why} if why else {}),
        "seconds": round(seconds, 2),
        "pairs_per_s": round(sum(r["scored"] for r in results) / seconds, 2) if results and seconds else None}
    if rows_out != rows_in:
        raise RuntimeError(f"rerank: {rows_in} input rows but {rows_out} output rows under {out.uri}")
    storage.write_bytes_atomic(storage.resolve(cfg.output).join("rerank_stats.json"),
                               (json.dumps(summary, indent=2) + "\n").encode())
    return summary


# ------------------------------------------------------------------------------------------- the job (jobs.rerank)
def _run(cfg: RerankConfig, progress) -> dict:
    return run_rerank(cfg)


def _plan(cfg: RerankConfig, res):
    from docrerank.rerank.plan import plan_rerank

    return plan_rerank(cfg, res)


def _report(cfg: RerankConfig, summary: dict) -> str:
    from docrerank.core.runtime import format_table

    return format_table(["rerank", "value"], [[k, v] for k, v in summary.items()])


HELP = """Score (query, candidate page) pairs from Parquet with a reranker: Ray Data over GPU (or CPU) actors, resumable.

    python -m jobs.rerank --config jobs/configs/rerank_local.yaml [key=value ...]

Input rows: a query column, a page id column and the page inline (image / text) or looked up in a pages table.
Writes <output>/scores/*.parquet (query_id, query, page_id, score, rank, error, kept columns) and
rerank_stats.json; a rerun scores only the row groups not done yet (resume=false: all again).
"""

JOB = Job(
    name="rerank", doc=HELP, config=RerankConfig, summary="score (query, page) pairs from Parquet",
    run=_run, plan=_plan, report=_report,
    outputs=lambda cfg: (cfg.output, ["scores/", "rerank_stats.json"]), progress=False,
)
