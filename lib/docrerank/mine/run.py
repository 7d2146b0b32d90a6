"""The mining job's driver ``run_mine``: load the positives, build the indexes, plan and resume shards, run the
stages (``mine.stages``) on Ray Data, keep the books.

Outputs under ``output`` (may be the build's own directory):
  mined/, mined_heldout/  examples (``examples_schema()``): positive row ``kind=positive``, negatives ``kind=mined``
  mining_status/          one row per input query: status (complete|short|skipped), reason, ranks, judgements;
                          written last per shard, so it marks progress (a rerun skips finished shards)
  _index/                 the retriever index per split (built once, loaded by every worker), the page->file map
  mining_stats.json       the books; _meta/ the run metadata (written by the job)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter

from docrerank.core import storage
from docrerank.mine.config import ColPaliOptions, MineConfig
from docrerank.mine.logic import NOT_SEARCHED, SPLITS, MinedQuery, batches_to_arrow, status_schema
from docrerank.mine.stages import FilterStage, MineStage, PageStore, WriteStage

log = logging.getLogger("docrerank.mine")

OWN_DIRS = ("mined", "mined_heldout", "mining_status", "_index")
MARKER = "mining_status"  # its shard is written last per batch: a batch with one is finished


# --- indexes -------------------------------------------------------------------------------------------


def _put_dir(local: str, loc: storage.Location) -> None:
    import pyarrow.fs as pafs

    if not (isinstance(loc.fs, pafs.LocalFileSystem) and local == loc.path):
        pafs.copy_files(local, loc.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=loc.fs)


def build_index(kind: str, loc: storage.Location, ids: list[str], texts: list[str] | None, index_uri: str,
                colpali: ColPaliOptions) -> None:
    """Build the ``kind`` index of the pages ``ids`` into ``loc`` (BM25 here; ColPali in a GPU task)."""
    import tempfile

    import pyarrow.fs as pafs

    if kind == "bm25":
        from docrerank.retrieval.retrievers import BM25Retriever

        local = loc.path if isinstance(loc.fs, pafs.LocalFileSystem) else tempfile.mkdtemp(prefix="docrerank-index-")
        BM25Retriever(ids, texts).save(local)
        _put_dir(local, loc)
        return
    import ray

    task = ray.remote(num_gpus=colpali.num_gpus or None, num_cpus=1)(_colpali_index)
    ray.get(task.remote(ids, index_uri, loc.uri, colpali.model_dump()))


def _colpali_index(ids: list[str], index_uri: str, dest: str, opts: dict) -> None:
    """Embed every page image once; save ``{"ids", "emb"}`` for the mining actors (runs on a GPU worker)."""
    import io
    import os
    import tempfile

    import torch
    from PIL import Image

    from docrerank.retrieval.retrievers import ColPaliRetriever

    r = ColPaliRetriever(opts["model"], opts["device"], opts["batch_size"], opts["model_class"])
    store, emb = PageStore(index_uri), []
    for i in range(0, len(ids), 64):
        pages = store.get(ids[i:i + 64], ("image",))
        emb += r._embed([Image.open(io.BytesIO(pages[p]["image"])).convert("RGB") for p in ids[i:i + 64]], "images")
        store.cache.clear()
    tmp = tempfile.mkdtemp(prefix="docrerank-index-")
    torch.save({"ids": ids, "emb": emb}, os.path.join(tmp, "colpali.pt"))
    _put_dir(tmp, storage.resolve(dest))


# --- driver --------------------------------------------------------------------------------------------


def load_positives(cfg: MineConfig) -> list[dict]:
    """Input positives ``{query_id, page_id, text}`` (unique by query id, sorted by it)."""
    from docrerank.core.schema import query_id

    if cfg.queries:
        loc = storage.resolve(cfg.queries)
        if storage.is_dir(loc):
            t = storage.read_parquet_dir(loc)
        else:
            import pyarrow.parquet as pq

            t = pq.read_table(loc.path, filesystem=loc.fs)
        col = "query" if "query" in t.column_names else "text"
        if "page_id" not in t.column_names or col not in t.column_names:
            raise ValueError(f"queries {cfg.queries}: expected columns page_id and query (or text), "
                             f"got {t.column_names}")
        rows = [{"query_id": r.get("query_id") or query_id(r["page_id"], "positive", r[col] or ""),
                 "page_id": r["page_id"], "text": r[col] or ""} for r in t.to_pylist()]
    else:
        base = storage.resolve(cfg.input)
        if storage.exists(base.join("queries")):
            t = storage.read_parquet_dir(base.join("queries"), columns=["query_id", "page_id", "text", "role", "verdict"])
            rows = [r for r in t.to_pylist() if r["role"] == "positive" and r["verdict"] == "kept"]
        else:
            rows = []
            for d in ("examples", "examples_heldout"):
                t = storage.read_parquet_dir(base.join(d), columns=["page_id", "query", "label"])
                rows += [{"query_id": query_id(r["page_id"], "positive", r["query"]), "page_id": r["page_id"],
                          "text": r["query"]} for r in t.to_pylist() if r["label"] == 1]
            if not rows:
                raise ValueError(f"input {cfg.input}: no queries/ and no positive rows in examples/")
        rows = [{"query_id": r["query_id"], "page_id": r["page_id"], "text": r["text"] or ""} for r in rows]
    uniq = {r["query_id"]: r for r in rows}
    return [uniq[q] for q in sorted(uniq)]


def pages_location(cfg: MineConfig) -> storage.Location:
    """The pages table to mine: ``pages`` when set, else the one the build of ``input`` read (recorded in its
    stats.json as ``sources.pages``; for older builds, its config's ``pages`` in ``_meta/build_dataset.json``),
    else ``<input>/pages`` (builds that ingested PDFs or wrote a query-page set's pages)."""
    if cfg.pages:
        return storage.resolve(cfg.pages)
    base = storage.resolve(cfg.input)
    recorded, where = None, None
    for name, path in (("stats.json", ("sources", "pages")), ("_meta/build_dataset.json", ("config", "pages"))):
        loc = base.join(*name.split("/"))
        if recorded is None and storage.exists(loc):
            recorded, where = json.loads(storage.read_bytes(loc)).get(path[0], {}).get(path[1]), name
    loc = storage.resolve(recorded) if recorded else base.join("pages")
    if not storage.exists(loc):
        how = f"the build's pages table, {recorded!r} as recorded in {where}," if recorded else f"{loc.uri}"
        raise ValueError(f"input {cfg.input}: no pages table: {how} does not exist; set pages= to the pages table "
                         f"the build read")
    return loc


def holdout_settings(cfg: MineConfig) -> tuple[float, int]:
    """(fraction, seed) of the held-out split: the config's, else the build's, else (0, 0)."""
    build = {}
    if cfg.input:
        meta = storage.resolve(cfg.input).join("_meta", "build_dataset.json")
        if storage.exists(meta):
            build = json.loads(storage.read_bytes(meta)).get("config", {})
    fraction = cfg.holdout_fraction if cfg.holdout_fraction is not None else build.get("holdout_fraction", 0.0)
    seed = cfg.holdout_seed if cfg.holdout_seed is not None else build.get("seed", 0)
    return float(fraction), int(seed)


def _sha(items) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:20]


def prepare_index(cfg: MineConfig, out: storage.Location, pages_loc: storage.Location, fraction: float,
                  hseed: int) -> tuple[dict, dict]:
    """Page->file map, the split of every page and one index per split (rebuilt only when its corpus changed).
    Returns (split of each page id, fingerprint of the corpus and the settings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from docrerank.core.schema import is_heldout

    files = storage.list_files(pages_loc, suffixes=(".parquet",))
    if not files:
        raise ValueError(f"no pages under {pages_loc.uri}")
    file_of: dict[str, str] = {}
    for f in files:
        for p in pq.read_table(f, columns=["page_id"], filesystem=pages_loc.fs).column("page_id").to_pylist():
            file_of.setdefault(p, storage.uri_of(pages_loc, f))  # a page stored twice: its first copy
    ids, file_col = list(file_of), list(file_of.values())
    index = out.join("_index")
    storage.write_table_atomic(index.join("page_files", "part-00000.parquet"),
                               pa.table({"page_id": ids, "file": file_col}))
    split_of = {p: "heldout" if is_heldout(p, fraction, hseed) else "train" for p in ids}
    splits = ["train"] + (["heldout"] if cfg.heldout == "mine" else [])
    corpus = {s: _sha(sorted(p for p in ids if split_of[p] == s)) for s in splits}
    settings = cfg.model_dump(mode="json", include={"retriever", "colpali", "top_n", "k", "min_negatives", "seed",
                                                    "filter", "heldout"})
    fingerprint = {"settings": settings, "holdout": [fraction, hseed], "corpus": corpus}
    for s in splits:
        marker = {"retriever": cfg.retriever, "model": cfg.colpali.model if cfg.retriever == "colpali" else None,
                  "corpus": corpus[s]}
        mloc = index.join(s, "index.json")
        if storage.exists(mloc) and json.loads(storage.read_bytes(mloc)) == marker:
            continue
        members = sorted(p for p in ids if split_of[p] == s)
        texts = None
        if cfg.retriever == "bm25":
            got = {}
            for f in files:
                t = pq.read_table(f, columns=["page_id", "text"], filesystem=pages_loc.fs)
                for p, x in zip(t.column("page_id").to_pylist(), t.column("text").to_pylist()):
                    if split_of[p] == s and p not in got:
                        got[p] = x
            texts = [got[p] or "" for p in members]
        t0 = time.perf_counter()
        build_index(cfg.retriever, index.join(s), members, texts, index.uri, cfg.colpali)
        storage.write_bytes_atomic(mloc, json.dumps(marker).encode())
        log.info("%s index of %d %s pages built in %.1fs", cfg.retriever, len(members), s, time.perf_counter() - t0)
    return split_of, fingerprint


def make_batches(queries: list[dict], split_of_query: dict[str, str], size: int) -> list[dict]:
    """Dataset rows: the queries of each split in query-id order, ``size`` at a time, shards named by their ids;
    ``state``: the batch's ``MinedQuery`` list.

    Finished batches are whole, so the queries left after an interruption batch up exactly as before."""
    items = []
    for split in SPLITS:
        qs = [q for q in queries if split_of_query[q["query_id"]] == split]
        for i in range(0, len(qs), size):
            chunk = qs[i:i + size]
            name = "part-" + _sha(q["query_id"] for q in chunk) + ".parquet"
            state = [MinedQuery(q["query_id"], q["page_id"], q["text"]) for q in chunk]
            items.append({"name": name, "split": split, "state": state})
    return items


def batches_table(items: list[dict]):
    """``make_batches``' rows as a pyarrow Table (the state typed as ``list<mined_query_type()>``)."""
    import pyarrow as pa

    return pa.table({"name": pa.array([it["name"] for it in items], pa.string()),
                     "split": pa.array([it["split"] for it in items], pa.string()),
                     "state": batches_to_arrow([it["state"] for it in items])})


def mining_stats(out: storage.Location, input_ids: set[str]) -> dict:
    """The books of the output (all runs): every input query's status, groups, false negatives, retrieval."""
    rows = [r for r in storage.read_parquet_dir(out.join("mining_status"), schema=status_schema()).to_pylist()
            if r["query_id"] in input_ids]
    kept = [r for r in rows if r["status"] in ("complete", "short")]
    searched = [r for r in rows if r["reason"] not in NOT_SEARCHED]
    ranks = [r["positive_rank"] for r in searched if r["positive_rank"] is not None]
    judged = [json.loads(r["judgements"]) for r in rows]
    return {
        "queries": len(input_ids), "accounted": len(rows),
        "by_split": dict(Counter(r["split"] for r in rows)),
        "status": dict(Counter(r["status"] for r in rows)),
        "short_by_reason": dict(Counter(r["reason"] for r in rows if r["status"] == "short")),
        "skipped_by_reason": dict(Counter(r["reason"] for r in rows if r["status"] == "skipped")),
        "groups": {d: sum(r["split"] == s for r in kept) for s, d in SPLITS.items()},
        "examples": sum(1 + len(r["negatives"]) for r in kept),
        "negatives": sum(len(r["negatives"]) for r in kept),
        "false_negatives_removed": sum(len(r["false_negatives"]) for r in rows),
        "queries_with_false_negatives": sum(bool(r["false_negatives"]) for r in rows),
        "judged": sum(len(j) for j in judged), "judge_errors": sum(r["judge_errors"] for r in rows),
        "searched": len(searched), "positive_in_top_n": len(ranks), "positive_not_retrieved": len(searched) - len(ranks),
        "positive_rank_mean": round(sum(ranks) / len(ranks), 3) if ranks else None,
        "candidates_mean": round(sum(r["candidates"] for r in searched) / len(searched), 3) if searched else None,
    }


def stage_engines(cfg: MineConfig) -> dict:
    """The engine config of every model stage by name (the false-negative filter's judge, if a model)."""
    return {} if isinstance(cfg.filter.engine, str) else {"filter": cfg.filter.engine}


def _worker_bundle(cfg: MineConfig) -> dict:
    gpu = cfg.colpali.num_gpus if cfg.retriever == "colpali" else 0
    return {"CPU": cfg.num_cpus, **({"GPU": gpu} if gpu else {})}


def plan_mine_pools(cfg: MineConfig):
    """The judge's model pool against the cluster joined, with one mining worker beside it (``engines.pool``);
    no look at the cluster for a model-free run on the CPU."""
    from docrerank.engines.pool import ClusterResources, PoolPlan, plan_pools
    from docrerank.engines.pool_ray import cluster_resources

    engines, worker = stage_engines(cfg), _worker_bundle(cfg)
    if not engines and "GPU" not in worker:
        return PoolPlan([], ClusterResources([]))
    return plan_pools(engines, cluster_resources(), also_needs=[worker])


def run_stages(cfg: MineConfig, items: list[dict], out: storage.Location, plan) -> tuple[Counter, list | None]:
    """Mine, filter and write every batch in one chain of workers; the judge runs in its model pool. Returns the
    statuses counted and the pools' summary (None without a model judge)."""
    import contextlib

    import ray.data

    from docrerank.core import runtime
    from docrerank.core.raydata import ChainStage, batch_format_of, excluded_from_ray_data
    from docrerank.engines.pool_ray import ModelPools

    statuses: Counter = Counter()
    worker = _worker_bundle(cfg)
    workers = min(len(items), cfg.num_workers or (1 if "GPU" in worker else runtime.cluster_cpus()))
    with contextlib.ExitStack() as stack:
        pools = stack.enter_context(ModelPools.start(plan)) if plan.pools else None
        if pools:
            stack.enter_context(excluded_from_ray_data(**pools.resources()))
        kw = {"cfg": cfg, "index_uri": out.join("_index").uri}
        stages: list = [(MineStage, kw), (FilterStage, {**kw, "pools": pools.handles if pools else None}), (WriteStage, kw)]
        table = batches_table(items)
        ds = ray.data.from_arrow([table.slice(i, 1) for i in range(table.num_rows)]).map_batches(
            ChainStage, fn_constructor_kwargs={"stages": stages}, batch_size=1, batch_format=batch_format_of(stages),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), num_cpus=worker["CPU"],
            **({"num_gpus": worker["GPU"]} if "GPU" in worker else {}))
        for batch in ds.iter_batches(batch_size=16, batch_format="pyarrow"):
            statuses.update({s: n for s in WriteStage.STATUSES if (n := sum(batch.column(s).to_pylist()))})
            if pools:
                pools.check()  # grows the pool; raises when the judge's requests fail too often
        if not pools:
            return statuses, None
        pools.check(final=True)
        return statuses, pools.summary()


def run_mine(cfg: MineConfig) -> dict:
    """Mine negatives into ``cfg.output`` on the current Ray cluster; return the stats (also mining_stats.json)."""
    from docrerank.core import runtime
    from docrerank.core.raydata import done_shard_names, remove_orphans
    from docrerank.core.schema import is_heldout

    t0 = time.perf_counter()
    plan = plan_mine_pools(cfg)  # a cluster that cannot hold the judge (or ColPali's GPUs) fails the job now
    if plan.problems:
        raise ValueError("model pools: " + "; ".join(plan.problems))
    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    if not cfg.resume:
        for d in OWN_DIRS:
            if storage.exists(out.join(d)):
                out.fs.delete_dir(out.join(d).path)
    pages_loc = pages_location(cfg)
    fraction, hseed = holdout_settings(cfg)
    queries = load_positives(cfg)[: cfg.limit_queries]
    split_of, fingerprint = prepare_index(cfg, out, pages_loc, fraction, hseed)
    remove_orphans(out, list(SPLITS.values()), MARKER)  # examples shards of an interrupted run's batches
    done = done_shard_names(out, MARKER)
    fp_loc = out.join("_index", "fingerprint.json")
    if done and storage.exists(fp_loc) and json.loads(storage.read_bytes(fp_loc)) != fingerprint:
        raise ValueError(f"{out.uri}: its mined shards were made with other settings or another corpus "
                         f"({json.loads(storage.read_bytes(fp_loc))} vs {fingerprint}); set resume=false to redo them")
    runtime.write_json(fp_loc, fingerprint)
    status_ids = set(storage.read_parquet_dir(out.join("mining_status"), columns=["query_id"], schema=status_schema())
                     .column("query_id").to_pylist())
    todo = [q for q in queries if q["query_id"] not in status_ids]
    split_of_query = {q["query_id"]: split_of.get(q["page_id"]) or
                      ("heldout" if is_heldout(q["page_id"], fraction, hseed) else "train") for q in queries}
    items = make_batches(todo, split_of_query, cfg.queries_per_batch)
    statuses, pool_stats = run_stages(cfg, items, out, plan) if items else (Counter(), None)
    stats = mining_stats(out, {q["query_id"] for q in queries})
    if stats["accounted"] != stats["queries"]:
        raise RuntimeError(f"{stats['queries'] - stats['accounted']} input queries have no mining_status row")
    stats["settings"] = {**fingerprint["settings"], "holdout_fraction": fraction, "holdout_seed": hseed}
    if pool_stats:
        stats["pools"] = pool_stats
    stats["this_run"] = {"queries": sum(statuses.values()), "status": dict(statuses), "batches": len(items),
                         "resumed_queries": len(queries) - len(todo), "seconds": round(time.perf_counter() - t0, 2)}
    runtime.write_json(out.join("mining_stats.json"), stats)
    return stats


def summary_rows(stats: dict) -> list[list]:
    """Rows of the job's summary table."""
    st, sk = stats["status"], stats["skipped_by_reason"]
    rows = [["queries", stats["queries"]], *[[f"  {s}", n] for s, n in sorted(stats["by_split"].items())],
            ["complete (k negatives)", st.get("complete", 0)], ["short (< k)", st.get("short", 0)],
            *[[f"  {r}", n] for r, n in sorted(stats["short_by_reason"].items())],
            ["skipped", st.get("skipped", 0)], *[[f"  {r}", n] for r, n in sorted(sk.items())]]
    rows += [[f"groups in {d}/", n] for d, n in stats["groups"].items()]
    rows += [["negatives", stats["negatives"]], ["pages judged", stats["judged"]],
             ["false negatives removed", stats["false_negatives_removed"]],
             ["queries with false negatives", stats["queries_with_false_negatives"]],
             ["positive in top N", stats["positive_in_top_n"]], ["positive not retrieved", stats["positive_not_retrieved"]],
             ["mean rank of the positive", stats["positive_rank_mean"]],
             ["this run: queries", stats["this_run"]["queries"]], ["this run: seconds", stats["this_run"]["seconds"]]]
    return rows
