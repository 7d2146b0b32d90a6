"""The dataset build on Ray Data: sources -> stages -> sharded, resumable outputs -> stats and card.

Outputs under ``output``: pages/ (from ingest or a query-page set), queries/ (every candidate with both
verifier scores, verdict and reason), examples/ (groups of 1 positive + k negatives), export/ (ColHNQue
layout), page_status/ (one row per finished page; written last per shard, so it marks progress),
quarantine/, stats.json, card.md, _meta/. Shards are named by a hash of their pages and written atomically;
a rerun skips finished pages, so an interrupted build resumes to exactly the output of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from docrerank.core import storage
from docrerank.build.config import BuildConfig
from docrerank.ingest.config import IngestConfig

log = logging.getLogger("docrerank.build")

PAGE_COLUMNS = ["page_id", "image", "image_format", "text"]
# Logical CPUs: reading is mostly I/O, and model-free actors leave a sliver of their core to it, so a pool
# as large as the machine never starves the read (a deadlock Ray Data cannot resolve on one small node).
READ_CPUS = 0.1
MODEL_FREE_CPUS = 0.9
OUTPUT_TABLES = ("queries", "examples", "examples_heldout", "export", "page_status")


def _write_shards(out: storage.Location, name: str, tables: dict) -> None:
    """Write each table's shard, page_status last (it marks the shard's pages done)."""
    for key in [k for k in tables if k != "page_status"] + ["page_status"]:
        if key in tables:
            storage.write_table_atomic(out.join(key, name), tables[key])


def remove_orphans(out: storage.Location) -> int:
    """Delete shards of batches whose page_status shard was never written (an interrupted run)."""
    done = {p.rsplit("/", 1)[-1] for p in storage.list_files(out.join("page_status"), suffixes=(".parquet",))}
    n = 0
    for table in OUTPUT_TABLES:
        if table == "page_status":
            continue
        for f in storage.list_files(out.join(table), suffixes=(".parquet",)):
            if f.rsplit("/", 1)[-1] not in done:
                out.fs.delete_file(f)
                n += 1
    return n


def done_pages(out: storage.Location) -> set[str]:
    from docrerank.core.schema import page_status_schema

    t = storage.read_parquet_dir(out.join("page_status"), columns=["page_id"], schema=page_status_schema())
    return set(t.column("page_id").to_pylist())


def load_given(path: str, pages_loc: storage.Location) -> dict[str, list[dict]]:
    """Given positives by page id, from JSONL/Parquet rows with ``page_id`` or ``doc`` + ``page_number``."""
    import pyarrow.parquet as pq

    loc = storage.resolve(path)
    if loc.path.endswith(".parquet") or storage.is_dir(loc):
        rows = storage.read_parquet_dir(loc).to_pylist() if storage.is_dir(loc) else pq.read_table(loc.path, filesystem=loc.fs).to_pylist()
    else:
        rows = [json.loads(line) for line in storage.read_bytes(loc).decode().splitlines() if line.strip()]
    by_doc = {}
    if rows and "page_id" not in rows[0]:
        t = storage.read_parquet_dir(pages_loc, columns=["page_id", "source_uri", "page_number"])
        for pid, uri, n in zip(*(t.column(c).to_pylist() for c in ("page_id", "source_uri", "page_number"))):
            by_doc[(uri.rsplit("/", 1)[-1], n)] = pid
    given: dict[str, list[dict]] = {}
    missing = 0
    for r in rows:
        if "question" not in r:
            raise ValueError(f"positives_file {path}: rows need a 'question' field, got keys {sorted(r)}")
        pid = r.get("page_id") or by_doc.get((str(r.get("doc", "")).rsplit("/", 1)[-1], r.get("page_number")))
        if pid is None:
            missing += 1
            continue
        given.setdefault(pid, []).append({"question": r["question"], "answer": r.get("answer")})
    if missing:
        log.warning("positives_file: %d questions name pages that are not in the pages table (ignored)", missing)
    return given


def build_vocabulary(pages_loc: storage.Location, max_pages: int = 20_000) -> dict:
    """Corpus vocabulary for the rules engine, from the text layer of up to ``max_pages`` pages."""
    import pyarrow.parquet as pq

    from docrerank.lexical.rules import Vocabulary

    texts = []
    for f in storage.list_files(pages_loc, suffixes=(".parquet",)):
        texts += pq.read_table(f, columns=["text"], filesystem=pages_loc.fs).column("text").to_pylist()
        if len(texts) >= max_pages:
            break
    v = Vocabulary.from_texts([t or "" for t in texts[:max_pages]])
    return {"years": dict(v.years), "entities": {k: sorted(c) for k, c in v.entities.items()}}


class AttachState:
    """Source rows -> pipeline rows: keep the page columns, add ``state`` with the given positives."""

    def __init__(self, given: dict, done: set, limit_ids: set | None):
        self.given, self.done, self.limit_ids = given, done, limit_ids

    def __call__(self, t):
        import pyarrow as pa

        ids = t.column("page_id").to_pylist()
        keep = [i not in self.done and (self.limit_ids is None or i in self.limit_ids) for i in ids]
        t = t.filter(pa.array(keep, pa.bool_()))
        inline = t.column("given").to_pylist() if "given" in t.column_names else None
        states = [json.dumps({"queries": [], "metrics": {},
                              "given": json.loads(inline[j]) if inline else self.given.get(i, [])})
                  for j, i in enumerate(t.column("page_id").to_pylist())]
        return t.select(PAGE_COLUMNS).append_column("state", pa.array(states, pa.string()))


def query_pages_source(batch: dict) -> dict:
    """A query-page set -> page rows (page id from the image bytes) with its queries as given positives.

    Columns: ``image`` (bytes, or a struct with ``bytes`` as HF datasets write it), ``positive_queries`` /
    ``queries`` (list) or ``query`` (str), optional ``answer`` and ``text`` (a text layer, if the set has one).
    """

    from docrerank.engines.messages import sniff_mime
    from docrerank.core.schema import page_id_of

    imgs = list(batch["image"])
    queries = batch.get("positive_queries", batch.get("queries", batch.get("query")))
    answers = batch.get("answer")
    texts = batch.get("text")
    out = {k: [] for k in (*PAGE_COLUMNS, "given")}
    for i, img in enumerate(imgs):
        img = img["bytes"] if isinstance(img, dict) else bytes(img)
        qs = queries[i]
        qs = [qs] if isinstance(qs, str) else [str(q) for q in list(qs)]
        ans = answers[i] if answers is not None else None
        ans = [ans] if isinstance(ans, str) else (list(ans) if ans is not None else [])
        pid = page_id_of(hashlib.sha256(img).hexdigest()[:32], 1)
        out["page_id"].append(pid)
        out["image"].append(img)
        out["image_format"].append(sniff_mime(img).split("/")[-1])
        out["text"].append(str(texts[i]) if texts is not None and texts[i] is not None else "")
        out["given"].append(json.dumps([
            {"question": q, "answer": (ans[j] if j < len(ans) else None)} for j, q in enumerate(qs) if q]))
    return out


class ChainStage:
    """Runs several stages in one actor, in order: one pool per model, model-free stages ride along."""

    def __init__(self, specs: list[tuple[str, dict]]):
        import importlib

        self.stages = []
        for target, kwargs in specs:
            mod, name = target.split(":")
            self.stages.append(getattr(importlib.import_module(mod), name)(**kwargs))

    def __call__(self, batch):
        for s in self.stages:
            batch = s(batch)
        return batch


def stage_specs(cfg: BuildConfig, vocab: dict, given: dict, done: set, limit_ids, write_pages: bool) -> list:
    """(target, kwargs, engine config or None) for every stage, in order."""
    S = "docrerank.build.stages:"
    specs = [("docrerank.build.run:AttachState", {"given": given, "done": done, "limit_ids": limit_ids}, None)]
    pe = None if cfg.positives.engine == "given" else cfg.positives.engine
    ve = None if cfg.verify.engine == "text" else cfg.verify.engine
    ne = None if cfg.negatives.engine == "rules" else cfg.negatives.engine
    specs += [
        (S + "PositivesStage", {"cfg": cfg}, pe),
        (S + "VerifyStage", {"cfg": cfg, "role": "positive"}, ve),
        (S + "NegativesStage", {"cfg": cfg, "vocabulary": vocab}, ne),
        (S + "VerifyStage", {"cfg": cfg, "role": "negative"}, ve),
        (S + "SelectStage", {"cfg": cfg}, None),
    ]
    if cfg.rephrase.engine != "none":
        specs.append((S + "RephraseStage", {"cfg": cfg}, cfg.rephrase.engine))
    specs.append(("docrerank.build.write:WriteStage", {"output": cfg.output, "positive_weight": cfg.select.positive_weight,
                                                       "k": cfg.select.k, "write_pages": write_pages,
                                                       "holdout_fraction": cfg.holdout_fraction, "seed": cfg.seed}, None))
    return specs


def group_stages(specs: list) -> list[tuple[list, object]]:
    """Split stages into actor groups: each model stage starts a group, model-free stages join the group
    before them (leading ones join the first model's), so a run holds one actor pool per model."""
    groups: list[tuple[list, object]] = []
    pending: list = []
    for target, kwargs, engine in specs:
        if engine is not None:
            groups.append((pending + [(target, kwargs)], engine))
            pending = []
        elif groups:
            groups[-1][0].append((target, kwargs))
        else:
            pending.append((target, kwargs))
    if pending:
        groups.append((pending, None))
    return groups


def _read_files(batch: dict, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from docrerank.core import storage as st

    tables = []
    for uri in batch["uri"]:
        loc = st.resolve(str(uri))
        tables.append(pq.read_table(loc.path, columns=columns, filesystem=loc.fs))
    return pa.concat_tables(tables)


def read_parquet_files(loc: storage.Location, columns: list[str] | None = None):
    """A dataset of every Parquet file under ``loc``, read by tasks of ``READ_CPUS`` logical CPUs.

    (``ray.data.read_parquet`` lists files in a task that takes a whole CPU; on a small node that CPU may be
    held by the stage actors, and the read never starts.)"""
    files = [storage.uri_of(loc, p) for p in storage.list_files(loc, suffixes=(".parquet",))]
    if not files:
        raise ValueError(f"no Parquet files under {loc.uri}")
    return read_parquet_files_list(files, columns)


def read_parquet_files_list(files: list[str], columns: list[str] | None = None):
    """A dataset of the given Parquet files (one light read task per file)."""
    import ray.data

    ds = ray.data.from_items([{"uri": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(_read_files, batch_size=1, fn_kwargs={"columns": columns}, num_cpus=READ_CPUS)


def run_build(cfg: BuildConfig) -> dict:
    """Build the dataset into ``cfg.output`` on the current Ray cluster; return stats (also in stats.json)."""
    import ray.data

    from docrerank.core import runtime
    from docrerank.build.write import funnel_stats
    from docrerank.build.card import write_card
    from docrerank.ingest.run import run_ingest

    t0 = time.perf_counter()
    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    meta = runtime.run_metadata("build_dataset", cfg)
    runtime.write_run_metadata(out, meta)
    positives_file, write_pages, ingest_stats = cfg.positives_file, False, None
    if cfg.input:
        icfg = IngestConfig(input=cfg.input, output=cfg.output, **cfg.ingest.model_dump())
        ingest_stats = run_ingest(icfg)
        pages_loc = out.join("pages")
        if cfg.input.startswith("sample:") and positives_file is None:
            positives_file = str(Path(cfg.output) / "sample_corpus" / "questions.jsonl")
    elif cfg.pages:
        pages_loc = storage.resolve(cfg.pages)
    else:
        pages_loc, write_pages = out.join("pages"), True
    orphans = remove_orphans(out)
    if orphans:
        log.info("removed %d shards of unfinished batches", orphans)
    done = done_pages(out)
    given = load_given(positives_file, pages_loc) if positives_file else {}
    limit_ids = None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic batches -> deterministic shards
    if cfg.query_pages:
        qp = storage.resolve(cfg.query_pages)
        ds = read_parquet_files(qp) if storage.is_dir(qp) else read_parquet_files_list([qp.uri])
        if cfg.limit_pages:
            ds = ds.limit(cfg.limit_pages)
        ds = ds.map_batches(query_pages_source, batch_size=cfg.pages_per_batch, num_cpus=READ_CPUS)
    else:
        if cfg.limit_pages:
            ids = storage.read_parquet_dir(pages_loc, columns=["page_id"]).column("page_id").to_pylist()
            limit_ids = set(sorted(ids)[: cfg.limit_pages])
        ds = read_parquet_files(pages_loc, PAGE_COLUMNS)
    vocab = build_vocabulary(pages_loc) if cfg.negatives.engine == "rules" and not cfg.query_pages else {}
    workers = cfg.num_workers or runtime.cluster_cpus()
    for specs, engine in group_stages(stage_specs(cfg, vocab, given, done, limit_ids, write_pages)):
        if engine is None:
            compute, res = ray.data.ActorPoolStrategy(min_size=1, max_size=workers), {"num_cpus": MODEL_FREE_CPUS}
        else:
            compute = ray.data.ActorPoolStrategy(size=engine.ray.concurrency)
            res = {"num_cpus": engine.ray.num_cpus, "num_gpus": engine.ray.num_gpus or None}
        ds = ds.map_batches(ChainStage, fn_constructor_kwargs={"specs": specs}, batch_size=cfg.pages_per_batch,
                            batch_format="pyarrow" if specs[0][0].endswith("AttachState") else "numpy",
                            compute=compute, **{k: v for k, v in res.items() if v is not None})
    n = 0
    statuses = {}
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for s in batch["status"]:
            statuses[s] = statuses.get(s, 0) + 1
            n += 1
    stats = {"this_run": {"pages": n, "status": statuses, "seconds": round(time.perf_counter() - t0, 2),
                          "resumed_pages": len(done)},
             **funnel_stats(out)}
    if ingest_stats:
        stats["ingest"] = {k: ingest_stats[k] for k in ("documents", "pages", "balanced")}
    runtime.write_json(out.join("stats.json"), stats)
    write_card(out, cfg, stats)
    return stats
