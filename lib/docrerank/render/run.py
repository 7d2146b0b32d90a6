"""The ingest job's driver: probe new inputs, plan page-range tasks, render them on a pool of workers
(:mod:`docrerank.render.pool`), resume, balance the books.

Output layout under ``output``:
  documents/  one row per opened document (what was planned)
  pages/      the pages table; shard ``part-<task>.parquet`` per render task, written atomically
  quarantine/ one row per input or page that produced no page row, with the reason
  ingest_stats.json  the books: inputs, pages expected, written and quarantined by reason
Shard names are deterministic and the pages shard of a task is written last, so a rerun skips what is done,
never duplicates a row, and removes quarantine shards of tasks that did not finish. Which files are inputs:
:mod:`docrerank.render.inputs`; what the output holds and the books: :mod:`docrerank.render.books`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict

from docrerank.core import storage
from docrerank.render.books import balance, load_state, summary_table
from docrerank.render.config import IngestConfig
from docrerank.render.document import Passwords, RenderSettings, quarantine_row
from docrerank.render.inputs import resolve_inputs
from docrerank.render.pool import WorkerPool

log = logging.getLogger("docrerank.ingest")

PROBE_BATCH = 8  # files per probe call when the cluster probes
LOG_EVERY_S = 30.0  # render progress is logged this often


# --- planning ------------------------------------------------------------------------------------------


def plan_tasks(docs: list[dict], skip: dict[str, set[int]], pages_per_task: int) -> list[dict]:
    """Split documents' missing pages into tasks of at most ``pages_per_task`` pages.

    Big documents become many tasks; small ones are packed together. Each task is
    ``{"task_id", "items": [{"doc": row, "pages": [...]}, ...]}`` with a content-derived id.
    """
    tasks, items, size = [], [], 0

    def flush():
        nonlocal items, size
        if items:
            spec = json.dumps([[it["doc"]["doc_id"], it["pages"]] for it in items])
            tasks.append({"task_id": hashlib.sha1(spec.encode()).hexdigest()[:20], "items": items})
        items, size = [], 0

    for doc in docs:
        todo = [p for p in range(1, doc["num_pages"] + 1) if p not in skip.get(doc["doc_id"], ())]
        while todo:
            take = todo[: pages_per_task - size]
            todo = todo[len(take):]
            items.append({"doc": doc, "pages": take})
            size += len(take)
            if size >= pages_per_task:
                flush()
    flush()
    return tasks


# --- probing and rendering -----------------------------------------------------------------------------


def _worker_kwargs(cfg: IngestConfig) -> dict:
    return {
        "output": cfg.output,
        "passwords": asdict(Passwords(default=list(cfg.passwords), by_name=dict(cfg.password_map))),
        "settings": asdict(RenderSettings(**cfg.render.model_dump())),
        "memory_mb": cfg.worker_memory_mb,
        "timeout_s": cfg.task_timeout_s,
    }


def probe_inputs(uris: list[str], cfg: IngestConfig, pool: WorkerPool | None) -> tuple[list[dict], list[dict]]:
    """Probe every URI: (documents rows, doc-level quarantine rows), in input order.

    Up to ``cfg.probe_local_max`` files are probed from the driver, in one isolated child process, while the
    pool's actors start; more are probed by the pool, ``PROBE_BATCH`` files per call.
    """
    from docrerank.render.workers import IngestWorker

    if len(uris) <= cfg.probe_local_max or pool is None:
        local = IngestWorker(**_worker_kwargs(cfg))
        try:
            results = local.probe(uris)
        finally:
            local.close()
    else:
        batches = [uris[s:s + PROBE_BATCH] for s in range(0, len(uris), PROBE_BATCH)]
        got = dict(pool.map("probe", [(b,) for b in batches]))
        results = [r for k in range(len(batches)) for r in got[k]]
    docs, bad = [], []
    for r in results:
        (docs if "doc" in r else bad).append(r.get("doc") or r.get("quarantine"))
    return docs, bad


def _shard_name(uris: list[str]) -> str:
    return "probe-" + hashlib.sha1("\n".join(uris).encode()).hexdigest()[:20] + ".parquet"


def remove_orphan_quarantine(out: storage.Location) -> int:
    """Delete render-quarantine shards whose task never wrote its pages shard (an interrupted run).

    Probe shards (``probe-*``) have no pages shard of their own and are kept."""
    pages = {p.rsplit("/", 1)[-1] for p in storage.list_files(out.join("pages"), suffixes=(".parquet",))}
    removed = 0
    for q in storage.list_files(out.join("quarantine"), suffixes=(".parquet",)):
        name = q.rsplit("/", 1)[-1]
        if name.startswith("part-") and name not in pages:
            out.fs.delete_file(q)
            removed += 1
    return removed


def _done(state, doc: dict) -> set[int]:
    """Pages of ``doc`` already written or quarantined."""
    return state.pages_done.get(doc["doc_id"], set()) | state.page_quarantine.get(doc["doc_id"], set())


def _rate(pages: float, seconds: float) -> float | None:
    return round(pages / seconds, 2) if seconds > 0 and pages else None


def _probe_new(new: list[str], cfg: IngestConfig, pool: WorkerPool | None, state, out: storage.Location) -> list[dict]:
    """Probe ``new`` inputs, write their documents and quarantine rows, add them to ``state``; return the
    documents opened (content duplicates of a known document are quarantined as ``duplicate``)."""
    import pyarrow as pa

    from docrerank.core.schema import documents_schema, quarantine_schema

    if not new:
        return []
    docs, bad = probe_inputs(new, cfg, pool)
    seen = {d["doc_id"]: d["source_uri"] for d in state.documents.values()}
    fresh = []
    for d in docs:
        if d["doc_id"] in seen:
            bad.append(quarantine_row(d["source_uri"], d["doc_id"], None, "probe", "duplicate", f"same bytes as {seen[d['doc_id']]}"))
        else:
            seen[d["doc_id"]] = d["source_uri"]
            fresh.append(d)
    if bad:
        storage.write_table_atomic(out.join("quarantine", _shard_name(new)), pa.Table.from_pylist(bad, schema=quarantine_schema()))
    if fresh:
        storage.write_table_atomic(out.join("documents", _shard_name(new)), pa.Table.from_pylist(fresh, schema=documents_schema()))
    for d in fresh:
        state.documents[d["doc_id"]] = d
    log.info("probe: %d new files, %d documents opened, %d quarantined", len(new), len(fresh), len(bad))
    return fresh


def _render(tasks: list[dict], pool: WorkerPool, n_pages: int) -> dict:
    """Render ``tasks`` on the pool; return pages rendered, image bytes, seconds, when the first task finished
    and the steady rate (pages of the tasks after the first one, over the time from the first to the last)."""
    t0 = last_log = time.perf_counter()
    rendered = image_bytes = 0
    first_at = first_pages = None
    for _, s in pool.map("render", [(t["task_id"], t["items"]) for t in tasks]):
        now = time.perf_counter()
        rendered += s["pages"]
        image_bytes += s["image_bytes"]
        if first_at is None:
            first_at, first_pages = now, rendered
        if now - last_log >= LOG_EVERY_S:
            last_log = now
            log.info("render: %d of %d pages, %.1f pages/s", rendered, n_pages, rendered / (now - t0))
    end = time.perf_counter()
    steady = _rate(rendered - first_pages, end - first_at) if first_at is not None and len(tasks) > 1 else None
    return {"rendered": rendered, "image_bytes": image_bytes, "seconds": end - t0, "first_task_at": first_at,
            "steady_pages_per_second": steady}


UNKNOWN_GROWTH_WORKERS = 256  # workers asked of an autoscaler that does not publish its limits (at most)


def planned_workers(res, tasks: int) -> int:
    """Render workers (1 CPU each) for ``tasks`` tasks on a cluster of ``res`` (``core.plan.Resources``): one per
    task, at most the CPUs the cluster can have (its autoscaler's maximum; an autoscaler of unknown limits is asked
    for at most ``UNKNOWN_GROWTH_WORKERS``, the workers it cannot place wait and hold nothing up), at least 1."""
    cap = res.cpu_capacity
    if res.grows and not res.max_cpus:
        cap = max(cap, UNKNOWN_GROWTH_WORKERS)
    return max(1, min(tasks, int(cap)))


def run_ingest(cfg: IngestConfig) -> dict:
    """Ingest ``cfg.input`` into ``cfg.output`` on the current Ray cluster; return the stats written
    (``ingest_stats.json``: the books, see :meth:`~docrerank.render.books.Books.to_dict`, and ``this_run``).

    Raises ValueError for an unusable input or output, RuntimeError when the books do not balance (an input or
    page neither written nor quarantined).
    """
    from docrerank.core import runtime

    t0 = time.perf_counter()
    out = storage.resolve(cfg.output)
    if storage.exists(out.join("pages")) and not cfg.resume and storage.list_files(out.join("pages")):
        raise ValueError(f"output: {cfg.output} already holds pages and resume=false; choose an empty output")
    storage.makedirs(out)
    inputs = resolve_inputs(cfg.input, cfg.output, cfg.suffixes)
    log.info("ingest: %d input files from %s", len(inputs), cfg.input)
    orphans = remove_orphan_quarantine(out)
    if orphans:
        log.info("removed %d quarantine shards of unfinished tasks", orphans)
    state = load_state(out)
    from docrerank.core.plan import detect_resources

    res = detect_resources()  # the CPUs present now and what the autoscaler can add
    workers = cfg.num_workers or max(1, int(res.cpus))  # first the workers that fit now (the probe uses them)
    new = [u for u in inputs if u not in state.known_uris]
    input_set = set(inputs)
    unfinished = any(d["source_uri"] in input_set and len(_done(state, d)) < d["num_pages"]
                     for d in state.documents.values())
    # The actors start in the background while the driver lists, probes and plans; a rerun with nothing left
    # to do starts none.
    pool = WorkerPool(workers, _worker_kwargs(cfg)) if new or unfinished else None
    try:
        # 1. Probe files the output does not know yet; content duplicates are kept once.
        fresh = _probe_new(new, cfg, pool, state, out)
        # 2. Render every page not yet written or quarantined, in bounded tasks.
        wanted = [d for d in state.documents.values() if d["source_uri"] in input_set]
        tasks = plan_tasks(wanted, {d["doc_id"]: _done(state, d) for d in wanted}, cfg.pages_per_task)
        n_pages = sum(len(it["pages"]) for t in tasks for it in t["items"])
        if pool is not None and not cfg.num_workers:
            want = planned_workers(res, len(tasks))
            if want > workers:  # an autoscaling cluster: pending workers make it add CPU nodes
                log.info("render: asking for %d workers (%d CPUs now; the autoscaler adds nodes)", want, int(res.cpus))
                pool.grow(want - workers)
                workers = want
        timing = _render(tasks, pool, n_pages) if tasks else {"rendered": 0, "image_bytes": 0, "seconds": 0.0}
    finally:
        if pool is not None:
            pool.close()

    # 3. The books, from the output itself.
    books = balance(inputs, load_state(out))
    stats = {
        **books.to_dict(),
        "this_run": {
            "new_inputs": len(new),
            "documents_opened": len(fresh),
            "tasks": len(tasks),
            "pages_planned": n_pages,
            "pages_rendered": timing["rendered"],
            "render_seconds": round(timing["seconds"], 3),
            "pages_per_second": _rate(timing["rendered"], timing["seconds"]),
            "startup_seconds": round(timing["first_task_at"] - t0, 3) if timing.get("first_task_at") else None,
            "steady_pages_per_second": timing.get("steady_pages_per_second"),
            "mean_image_kib": round(timing["image_bytes"] / timing["rendered"] / 1024, 1) if timing["rendered"] else None,
            "workers": workers,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    }
    runtime.write_json(out.join("ingest_stats.json"), stats)
    log.info("ingest: %d of %d pages written, %d quarantined, %d of %d inputs quarantined; books balance: %s",
             books.pages_written, books.pages_expected, sum(books.pages_quarantined.values()),
             sum(books.documents_quarantined.values()), books.inputs, "yes" if books.balanced else "NO")
    if not books.balanced:
        log.error("ingest books for %s:\n%s", cfg.output, summary_table(stats))
        raise RuntimeError("ingest books do not balance:\n  " + "\n  ".join(books.problems[:20]))
    return stats
