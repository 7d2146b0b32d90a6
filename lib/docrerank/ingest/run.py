"""The ingest job's Ray Data driver: probe new inputs, plan page-range tasks, render them, resume, balance the books.

Output layout under ``output``:
  documents/  one row per opened document (what was planned)
  pages/      the pages table; shard ``part-<task>.parquet`` per render task, written atomically
  quarantine/ one row per input or page that produced no page row, with the reason
  ingest_stats.json  the books: inputs, pages expected, written and quarantined by reason
Shard names are deterministic and the pages shard of a task is written last, so a rerun skips what is done,
never duplicates a row, and removes quarantine shards of tasks that did not finish. Which files are inputs:
:mod:`docrerank.ingest.inputs`; what the output holds and the books: :mod:`docrerank.ingest.books`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from dataclasses import asdict

from docrerank.core import storage
from docrerank.ingest.books import balance, load_state, summary_table
from docrerank.ingest.config import IngestConfig
from docrerank.ingest.inputs import resolve_inputs
from docrerank.ingest.render import Passwords, RenderSettings, quarantine_row

log = logging.getLogger("docrerank.ingest")


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


# --- Ray Data actors ---------------------------------------------------------------------------------


class _IsolatedActor:
    def __init__(self, passwords: dict, settings: dict, memory_mb: int, timeout_s: float):
        from docrerank.core.isolate import IsolatedWorker

        self.passwords, self.settings, self.timeout_s = passwords, settings, timeout_s
        self.worker = IsolatedWorker(memory_limit_mb=memory_mb)


class ProbeActor(_IsolatedActor):
    """Reads and opens documents in an isolated child; emits documents rows or quarantine rows as JSON."""

    def __call__(self, batch: dict) -> dict:
        from docrerank.core.isolate import ChildCrashed, ChildTimeout, RemoteError

        out = []
        for uri in batch["source_uri"]:
            try:
                res = self.worker.call("docrerank.ingest.render:child_probe", uri, self.passwords, self.settings, timeout=self.timeout_s)
            except ChildCrashed as e:
                res = {"quarantine": quarantine_row(uri, None, None, "probe", "worker_crash", str(e))}
            except ChildTimeout as e:
                res = {"quarantine": quarantine_row(uri, None, None, "probe", "timeout", str(e))}
            except RemoteError as e:
                reason = "memory_limit" if e.exc_type == "MemoryError" else "corrupt"
                res = {"quarantine": quarantine_row(uri, None, None, "probe", reason, str(e))}
            out.append(json.dumps(res))
        return {"result": out}


class RenderActor(_IsolatedActor):
    """Renders one task per call in an isolated child and writes its shards; emits a small summary."""

    def __init__(self, output: str, **kw):
        super().__init__(**kw)
        self.out = storage.resolve(output)

    def _call(self, doc: dict, pages: list[int]) -> tuple[list[dict], list[dict]]:
        from docrerank.core.isolate import ChildCrashed, ChildTimeout, RemoteError

        try:
            return self.worker.call("docrerank.ingest.render:child_render", doc, pages, self.passwords, self.settings, timeout=self.timeout_s)
        except (ChildCrashed, ChildTimeout, RemoteError) as e:
            if len(pages) > 1:  # find the page that did it: the others still render
                rows, bad = [], []
                for p in pages:
                    r, b = self._call(doc, [p])
                    rows += r
                    bad += b
                return rows, bad
            if isinstance(e, ChildCrashed):
                reason = "worker_crash"
            elif isinstance(e, ChildTimeout):
                reason = "timeout"
            else:
                reason = "memory_limit" if e.exc_type == "MemoryError" else "render_error"
            return [], [quarantine_row(doc["source_uri"], doc["doc_id"], pages[0], "render", reason, f"page {pages[0]}: {e}")]

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa

        from docrerank.core.raydata import write_shards
        from docrerank.core.schema import pages_schema, quarantine_schema

        summaries = []
        for task_id, items_json in zip(batch["task_id"], batch["items"]):
            t0 = time.perf_counter()
            rows, bad = [], []
            for item in json.loads(items_json):
                r, b = self._call(item["doc"], item["pages"])
                rows += r
                bad += b
            tables = {"pages": pa.Table.from_pylist(rows, schema=pages_schema())}
            if bad:
                tables["quarantine"] = pa.Table.from_pylist(bad, schema=quarantine_schema())
            write_shards(self.out, f"part-{task_id}.parquet", tables, marker="pages")  # pages last: task complete
            summaries.append(json.dumps({
                "task_id": task_id, "pages": len(rows), "quarantined": collections.Counter(q["error"] for q in bad),
                "seconds": time.perf_counter() - t0, "image_bytes": sum(len(r["image"]) for r in rows),
            }))
        return {"summary": summaries}


# --- the job -----------------------------------------------------------------------------------------


def _actor_kwargs(cfg: IngestConfig) -> dict:
    return {
        "passwords": asdict(Passwords(default=list(cfg.passwords), by_name=dict(cfg.password_map))),
        "settings": asdict(RenderSettings(**cfg.render.model_dump())),
        "memory_mb": cfg.worker_memory_mb,
        "timeout_s": cfg.task_timeout_s,
    }


def probe_inputs(uris: list[str], cfg: IngestConfig, workers: int) -> tuple[list[dict], list[dict]]:
    """Probe every URI: (documents rows, doc-level quarantine rows), in input order.

    Up to ``cfg.probe_local_max`` files are probed from the driver, in one isolated child process (starting
    a pool of actors costs more than opening a few hundred files); more go to the cluster.
    """
    import ray.data

    if not uris:
        return [], []
    if len(uris) <= cfg.probe_local_max:
        actor = ProbeActor(**_actor_kwargs(cfg))
        try:
            results = actor({"source_uri": uris})["result"]
        finally:
            actor.worker.close()
        docs, bad = [], []
        for r in map(json.loads, results):
            (docs if "doc" in r else bad).append(r.get("doc") or r.get("quarantine"))
        return docs, bad
    ds = ray.data.from_items([{"source_uri": u} for u in uris], override_num_blocks=min(len(uris), 4 * workers))
    ds = ds.map_batches(
        ProbeActor, batch_size=8, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), num_cpus=1, fn_constructor_kwargs=_actor_kwargs(cfg)
    )
    docs, bad = [], []
    for row in ds.iter_rows():
        res = json.loads(row["result"])
        (docs if "doc" in res else bad).append(res.get("doc") or res.get("quarantine"))
    return docs, bad


def render_tasks(tasks: list[dict], cfg: IngestConfig, workers: int):
    """Run render tasks on the cluster; yields one summary dict per finished task."""
    import ray.data

    rows = [{"task_id": t["task_id"], "items": json.dumps(t["items"])} for t in tasks]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 20_000))
    ds = ds.map_batches(
        RenderActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
        fn_constructor_kwargs={"output": cfg.output, **_actor_kwargs(cfg)},
    )
    for row in ds.iter_rows():
        yield json.loads(row["summary"])


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


def run_ingest(cfg: IngestConfig) -> dict:
    """Ingest ``cfg.input`` into ``cfg.output`` on the current Ray cluster; return the stats written
    (``ingest_stats.json``: the books, see :meth:`~docrerank.ingest.books.Books.to_dict`, and ``this_run``).

    Raises ValueError for an unusable input or output, RuntimeError when the books do not balance (an input or
    page neither written nor quarantined).
    """
    import pyarrow as pa

    from docrerank.core import runtime
    from docrerank.core.schema import documents_schema, quarantine_schema

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
    workers = cfg.num_workers or runtime.cluster_cpus()

    # 1. Probe files the output does not know yet; content duplicates are kept once.
    new = [u for u in inputs if u not in state.known_uris]
    docs, bad = probe_inputs(new, cfg, workers)
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

    # 2. Render every page not yet written or quarantined, in bounded tasks.
    skip = {k: state.pages_done.get(k, set()) | state.page_quarantine.get(k, set()) for k in state.documents}
    wanted = [d for d in state.documents.values() if d["source_uri"] in set(inputs)]
    tasks = plan_tasks(wanted, skip, cfg.pages_per_task)
    n_pages = sum(len(it["pages"]) for t in tasks for it in t["items"])
    log.info("render: %d pages in %d tasks on %d workers", n_pages, len(tasks), workers)
    t_render = time.perf_counter()
    rendered, image_bytes = 0, 0
    for s in render_tasks(tasks, cfg, workers) if tasks else ():
        rendered += s["pages"]
        image_bytes += s["image_bytes"]
    render_s = time.perf_counter() - t_render

    # 3. The books, from the output itself.
    books = balance(inputs, load_state(out))
    stats = {
        **books.to_dict(),
        "this_run": {
            "new_inputs": len(new),
            "tasks": len(tasks),
            "pages_planned": n_pages,
            "pages_rendered": rendered,
            "render_seconds": round(render_s, 3),
            "pages_per_second": round(rendered / render_s, 2) if render_s > 0 and rendered else None,
            "mean_image_kib": round(image_bytes / rendered / 1024, 1) if rendered else None,
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
