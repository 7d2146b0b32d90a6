"""Document-mined hard negatives: for each positive (query, page), k other pages a first-stage retriever ranks high.

For every kept positive of a build (or a given query-page set) the retriever returns the top ``top_n`` pages of
the same corpus; the positive page is dropped, the rest are put in a seeded order (``Random(f"{seed}|{query_id}")``,
so results do not depend on batching) and the first ``k`` that the false-negative filter lets through become the
group's negatives. The filter judges a mined page with the build's two verify prompts (or the text-layer judge);
a page that answers the query is a false negative: it is removed, counted and replaced by the next candidate.

Splits: the build holds out documents (``is_heldout``). A training query is mined from training documents only
and a held-out query from held-out documents only, so no held-out page ever trains the reranker.

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
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from docrerank import storage
from docrerank.config import Config
from docrerank.engines.base import EngineConfig

log = logging.getLogger("docrerank.mine")

SPLITS = {"train": "mined", "heldout": "mined_heldout"}
OWN_DIRS = ("mined", "mined_heldout", "mining_status", "_index")


class MineFilterConfig(Config):
    """The false-negative filter: is a mined page in fact an answer to the query?"""

    engine: Literal["none", "text"] | EngineConfig = "text"
    """``none``: keep every sampled page; ``text``: the model-free text-layer judge; or an engine config of a VLM
    judge (hf / vllm / http, as in the build's ``verify.engine``)."""
    prompt: str = "verify"
    """Prompt template with prompt_a and prompt_b (the build's verify prompts)."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """p(answerable) threshold of the two prompts (the build's 0.5 suits a VLM judge; the text judge scores a
    whole question by the share of its words on the page and needs more, e.g. 0.7, see mine_local.yaml)."""
    rule: Literal["either", "both"] = "either"
    """``either``: a page is removed when either prompt finds it answerable (the build's rule for negatives);
    ``both``: only when both do (the build's rule for positives; removes fewer pages)."""
    prefilter: Literal["none", "text"] = "text"
    """Before a model judge, remove pages whose text layer already shows them answerable (both text estimates
    >= threshold; no model call for them). Pages without text always go to the model."""


class ColPaliOptions(Config):
    """ColPali / ColQwen first stage (colpali-engine, GPU)."""

    model: str | None = None
    """colpali-engine checkpoint (path or hub id), e.g. ``vidore/colqwen2-v1.0``."""
    model_class: str | None = None
    """colpali-engine class when the name does not tell (``ColQwen2``, ``ColPali``, ...)."""
    device: str = "cuda"
    """Torch device of the index builder and the mining actors."""
    batch_size: int = Field(4, ge=1)
    """Pages or queries per forward pass."""
    num_gpus: float = Field(1.0, ge=0)
    """GPUs per mining actor and for the index build."""


class MineConfig(Config):
    """``jobs.mine_negatives``: document-mined negatives (retriever top-N, positive excluded, seeded sample of k)."""

    output: str
    """Output directory or URI (mined/, mined_heldout/, mining_status/, _index/, mining_stats.json); may be the
    build output itself."""
    input: str | None = None
    """A build output: pages/ and the kept positives of queries/ (or the positive rows of examples/ and
    examples_heldout/ when queries/ is absent); its _meta/build_dataset.json gives the held-out split."""
    pages: str | None = None
    """A pages table (directory of Parquet) instead of ``<input>/pages``."""
    queries: str | None = None
    """A query-page set instead of the build's positives: Parquet (file or directory) with ``page_id`` and
    ``query`` (or ``text``), optional ``query_id``."""
    retriever: Literal["bm25", "colpali"] = "bm25"
    """First stage: ``bm25`` over the page text layer (CPU) or ``colpali`` over page images (GPU)."""
    colpali: ColPaliOptions = Field(default_factory=ColPaliOptions)
    """ColPali options (retriever: colpali)."""
    top_n: int = Field(10, ge=2)
    """Pages retrieved per query; the positive is dropped from them (the paper: top 10)."""
    k: int = Field(3, ge=1)
    """Negatives per query (the paper: 3)."""
    min_negatives: int = Field(1, ge=1)
    """Queries left with fewer negatives are skipped (recorded); between this and k they are kept, short."""
    seed: int = 0
    """Seed of the sampling (each query's order comes from the seed and its query id)."""
    positive_weight: Literal["k", "one"] = "k"
    """Example weight of the positive: its number of negatives (the build's 3:1) or 1."""
    filter: MineFilterConfig = Field(default_factory=MineFilterConfig)
    """False-negative filter."""
    holdout_fraction: float | None = Field(None, ge=0, lt=1)
    """Share of documents held out; default: the build's (``<input>/_meta/build_dataset.json``), else 0."""
    holdout_seed: int | None = None
    """Seed of the held-out split; default: the build's seed, else 0."""
    heldout: Literal["mine", "skip"] = "mine"
    """Held-out queries: ``mine`` them among held-out pages into mined_heldout/, or ``skip`` them (recorded)."""
    queries_per_batch: int = Field(32, ge=1)
    """Queries per batch and output shard."""
    limit_queries: int | None = Field(None, ge=1)
    """Mine at most this many queries (the first by query id), for a quick look."""
    num_workers: int | None = Field(None, ge=1)
    """Mining actors; default: the cluster's CPUs (BM25) or 1 (ColPali)."""
    num_cpus: float = Field(0.5, gt=0)
    """CPUs per mining actor (small values leave room for Ray Data on a small machine)."""
    resume: bool = True
    """Skip shards finished by an earlier run with the same settings; false deletes this job's outputs first."""

    @model_validator(mode="after")
    def _check(self):
        if not (self.input or self.pages):
            raise ValueError("expected input (a build output) or pages (a pages table)")
        if not (self.input or self.queries):
            raise ValueError("expected input (a build output) or queries (a query-page Parquet set)")
        if self.retriever == "colpali" and not self.colpali.model:
            raise ValueError("retriever: 'colpali' needs colpali.model (a colpali-engine checkpoint)")
        if self.min_negatives > self.k:
            raise ValueError(f"min_negatives: got {self.min_negatives}, expected at most k={self.k}")
        return self


# --- pure logic ----------------------------------------------------------------------------------------


def group_id(query_id: str) -> str:
    """Stable id of a query's mined group."""
    return hashlib.sha256(f"{query_id}|mined".encode()).hexdigest()[:24]


def seeded_order(candidates: list[str], seed: int, query_id: str) -> list[str]:
    """The candidates in the query's seeded random order (independent of batching and of other queries)."""
    out = list(candidates)
    random.Random(f"{seed}|{query_id}").shuffle(out)
    return out


def candidates_of(run: dict[str, float], positive: str, top_n: int) -> tuple[list[str], int | None]:
    """(retrieved pages but the positive, in rank order; the positive's 1-based rank or None) from a top-N run."""
    from docrerank.eval.metrics import order

    ranked = order(run)[:top_n]
    rank = ranked.index(positive) + 1 if positive in ranked else None
    return [p for p in ranked if p != positive], rank


Judge = Callable[[list[tuple[dict, str]]], list[tuple[float | None, float | None, str | None]]]


def is_false_negative(a: float, b: float, threshold: float, rule: str) -> bool:
    """Whether a page judged (a, b) answers the query under ``rule`` (either / both prompts)."""
    return (a >= threshold or b >= threshold) if rule == "either" else (a >= threshold and b >= threshold)


def select_negatives(queries: list[dict], k: int, judge: Judge | None, threshold: float = 0.5,
                     rule: str = "either") -> None:
    """Fill each query's ``negatives``: the first ``k`` pages of its ``order`` that the judge lets through.

    Rounds: every query sends its next (k - accepted) candidates to one batched ``judge`` call, until it has k or
    runs out, so a page is judged only when it could be used. Sets ``false_negatives``, ``judged`` {page: [a, b]}
    and ``judge_errors`` (a page the judge failed on is not used)."""
    for q in queries:
        q.update(negatives=[], false_negatives=[], judged={}, judge_errors=0)
        if judge is None:
            q["negatives"] = q["order"][:k]
    if judge is None:
        return
    nxt = {q["query_id"]: 0 for q in queries}
    while True:
        jobs = []
        for q in queries:
            i, need = nxt[q["query_id"]], k - len(q["negatives"])
            take = q["order"][i:i + need] if need > 0 else []
            nxt[q["query_id"]] = i + len(take)
            jobs += [(q, p) for p in take]
        if not jobs:
            return
        for (q, p), (a, b, err) in zip(jobs, judge(jobs)):
            if err:
                q["judge_errors"] += 1
                continue
            q["judged"][p] = [round(a, 4), round(b, 4)]
            (q["false_negatives"] if is_false_negative(a, b, threshold, rule) else q["negatives"]).append(p)


def finish_status(q: dict, k: int, min_negatives: int) -> None:
    """Set ``status`` and ``reason`` of a mined query from its negatives."""
    n = len(q["negatives"])
    why = "false_negatives" if q["false_negatives"] else "judge_errors" if q["judge_errors"] else "few_candidates"
    if not q["candidates"]:
        q["status"], q["reason"] = "skipped", "no_candidates"
    elif n >= k:
        q["status"], q["reason"] = "complete", None
    elif n >= min_negatives:
        q["status"], q["reason"] = "short", why
    else:
        q["status"], q["reason"] = "skipped", f"too_few_negatives:{why}"


def status_schema():
    """mining_status: one row per input query."""
    import pyarrow as pa

    return pa.schema([
        ("query_id", pa.string()), ("page_id", pa.string()), ("query", pa.string()), ("split", pa.string()),
        ("status", pa.string()),  # complete | short | skipped
        ("reason", pa.string()),  # why short or skipped
        ("retrieved", pa.int32()),  # pages the retriever returned (<= top_n)
        ("positive_rank", pa.int32()),  # 1-based rank of the positive among them, null when not retrieved
        ("candidates", pa.int32()), ("negatives", pa.list_(pa.string())),
        ("false_negatives", pa.list_(pa.string())), ("judge_errors", pa.int32()),
        ("judgements", pa.string()),  # JSON {page_id: [p_a, p_b]} of every judged page
    ])


# --- pages and indexes ---------------------------------------------------------------------------------


class PageStore:
    """Reads pages by id, only from the files that hold them (the page->file map is built once by the driver)."""

    def __init__(self, index_uri: str):
        loc = storage.resolve(index_uri)
        t = storage.read_parquet_dir(loc.join("page_files"))
        self.file_of = dict(zip(t.column("page_id").to_pylist(), t.column("file").to_pylist()))
        self.cache: dict[str, dict] = {}

    def get(self, ids, columns: tuple[str, ...] = ("text",)) -> dict[str, dict]:
        import pyarrow.parquet as pq

        want = [i for i in set(ids) if i in self.file_of and not all(c in self.cache.get(i, {}) for c in columns)]
        by_file: dict[str, list[str]] = {}
        for i in want:
            by_file.setdefault(self.file_of[i], []).append(i)
        for f, pids in sorted(by_file.items()):
            loc = storage.resolve(f)
            t = pq.read_table(loc.path, columns=["page_id", *columns], filters=[("page_id", "in", pids)],
                              filesystem=loc.fs)
            for r in t.to_pylist():
                self.cache.setdefault(r["page_id"], {}).update(r)
        return {i: self.cache[i] for i in ids if i in self.cache}


def _fetch_dir(loc: storage.Location) -> str:
    """A local directory holding ``loc``'s files (itself when local; a temp copy from an object store)."""
    import tempfile

    import pyarrow.fs as pafs

    if isinstance(loc.fs, pafs.LocalFileSystem):
        return loc.path
    tmp = tempfile.mkdtemp(prefix="docrerank-index-")
    pafs.copy_files(loc.path, tmp, source_filesystem=loc.fs, destination_filesystem=pafs.LocalFileSystem())
    return tmp


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
        from docrerank.eval.retrievers import BM25Retriever

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

    from docrerank.eval.retrievers import ColPaliRetriever

    r = ColPaliRetriever(opts["model"], opts["device"], opts["batch_size"], opts["model_class"])
    store, emb = PageStore(index_uri), []
    for i in range(0, len(ids), 64):
        pages = store.get(ids[i:i + 64], ("image",))
        emb += r._embed([Image.open(io.BytesIO(pages[p]["image"])).convert("RGB") for p in ids[i:i + 64]], "images")
        store.cache.clear()
    tmp = tempfile.mkdtemp(prefix="docrerank-index-")
    torch.save({"ids": ids, "emb": emb}, os.path.join(tmp, "colpali.pt"))
    _put_dir(tmp, storage.resolve(dest))


class Searcher:
    """A loaded index of one split: ``search({qid: text}, k) -> {qid: {page_id: score}}``."""

    def __init__(self, kind: str, index_uri: str, colpali: dict, model=None):
        local = _fetch_dir(storage.resolve(index_uri))
        self.kind = kind
        if kind == "bm25":
            from docrerank.eval.retrievers import BM25Retriever

            self.bm25 = BM25Retriever.load(local)
            return
        import os

        import torch

        from docrerank.eval.retrievers import ColPaliRetriever

        self.model = model or ColPaliRetriever(colpali["model"], colpali["device"], colpali["batch_size"],
                                               colpali["model_class"])
        data = torch.load(os.path.join(local, "colpali.pt"))
        self.ids, self.emb = data["ids"], data["emb"]

    def search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        if self.kind == "bm25":
            return self.bm25.search(queries, k)
        from docrerank.eval.retrievers import top_k

        if not self.ids:
            return {q: {} for q in queries}
        qids = list(queries)
        q_emb = self.model._embed([queries[q] for q in qids], "queries")
        scores = self.model.processor.score_multi_vector(q_emb, self.emb, device=self.model.device)
        return {q: top_k(dict(zip(self.ids, scores[i].float().tolist())), k) for i, q in enumerate(qids)}


# --- Ray Data stages -----------------------------------------------------------------------------------
# One dataset row = one batch of queries (``name`` of its shard, ``split``, ``state``: JSON list of queries).

NOT_SEARCHED = ("heldout_not_mined", "no_query_text", "page_not_found")


def _rows(batch) -> list[dict]:
    from docrerank.build_output import batch_rows

    return batch_rows(batch)


def _cols(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


class MineStage:
    """Retrieve the top N of each query in its split's index, drop the positive, put the rest in seeded order."""

    def __init__(self, cfg: MineConfig, index_uri: str):
        self.cfg, self.index_uri = cfg, index_uri
        self.store = PageStore(index_uri)
        self.searchers: dict[str, Searcher] = {}

    def _searcher(self, split: str) -> Searcher:
        if split not in self.searchers:  # loaded once per actor, on first use
            uri = storage.resolve(self.index_uri).join(split).uri
            shared = next((getattr(s, "model", None) for s in self.searchers.values()), None)  # one model per actor
            self.searchers[split] = Searcher(self.cfg.retriever, uri, self.cfg.colpali.model_dump(), shared)
        return self.searchers[split]

    def __call__(self, batch):
        rows = _rows(batch)
        for r in rows:
            qs = json.loads(r["state"])
            self.mine(r["split"], qs)
            r["state"] = json.dumps(qs)
        return _cols(rows)

    def mine(self, split: str, qs: list[dict]) -> None:
        todo = []
        for q in qs:
            q.update(candidates=[], order=[], retrieved=0, positive_rank=None, negatives=[], false_negatives=[],
                     judged={}, judge_errors=0, status=None, reason=None)
            if split == "heldout" and self.cfg.heldout == "skip":
                q["status"], q["reason"] = "skipped", "heldout_not_mined"
            elif not (q["text"] or "").strip():
                q["status"], q["reason"] = "skipped", "no_query_text"
            elif q["page_id"] not in self.store.file_of:
                q["status"], q["reason"] = "skipped", "page_not_found"
            else:
                todo.append(q)
        if not todo:
            return
        run = self._searcher(split).search({q["query_id"]: q["text"] for q in todo}, self.cfg.top_n)
        for q in todo:
            hits = run.get(q["query_id"], {})
            q["candidates"], q["positive_rank"] = candidates_of(hits, q["page_id"], self.cfg.top_n)
            q["retrieved"] = min(len(hits), self.cfg.top_n)
            q["order"] = seeded_order(q["candidates"], self.cfg.seed, q["query_id"])


class FilterStage:
    """Pick each query's negatives from its seeded order, judging candidates with the false-negative filter."""

    def __init__(self, cfg: MineConfig, index_uri: str):
        self.cfg, self.f = cfg, cfg.filter
        self.store = PageStore(index_uri)
        self.engine, self.prompt = None, None
        if not isinstance(self.f.engine, str):
            from docrerank.engines import build_engine
            from docrerank.prompts import load_prompt

            self.engine, self.prompt = build_engine(self.f.engine), load_prompt(self.f.prompt)

    def __call__(self, batch):
        rows = _rows(batch)
        for r in rows:
            qs = json.loads(r["state"])
            todo = [q for q in qs if q["status"] is None]
            select_negatives(todo, self.cfg.k, None if self.f.engine == "none" else self.judge, self.f.threshold,
                             self.f.rule)
            for q in todo:
                finish_status(q, self.cfg.k, self.cfg.min_negatives)
            r["state"] = json.dumps(qs)
        self.store.cache.clear()
        return _cols(rows)

    def judge(self, jobs: list[tuple[dict, str]]) -> list[tuple[float | None, float | None, str | None]]:
        """(p_a, p_b, error) per (query, page): the text judge, or the VLM's two verify prompts."""
        from docrerank.stages.textjudge import judge_text

        pages = self.store.get([p for _, p in jobs], ("text",) if self.engine is None else ("text", "image"))
        out: list = [None] * len(jobs)
        to_model = []
        for i, (q, p) in enumerate(jobs):
            page = pages.get(p)
            if page is None:
                out[i] = (None, None, "page_not_found")
                continue
            text = page.get("text") or ""
            if self.engine is None or (self.f.prefilter == "text" and text.strip()):
                a, b = judge_text(q["text"], text)
                # in front of a model, the text layer only removes what both of its estimates find answerable
                if self.engine is None or is_false_negative(a, b, self.f.threshold, "both"):
                    out[i] = (a, b, None)
                    continue
            to_model.append(i)
        if to_model:
            from docrerank.engines import JudgeRequest, user

            reqs = [JudgeRequest([user(pages[jobs[i][1]]["image"], self.prompt[key].format(query=jobs[i][0]["text"]))],
                                 yes=self.prompt["answer_yes"], no=self.prompt["answer_no"], id=jobs[i][1])
                    for i in to_model for key in ("prompt_a", "prompt_b")]
            res = self.engine.judge(reqs)
            for j, i in enumerate(to_model):
                ra, rb = res[2 * j], res[2 * j + 1]
                out[i] = (ra.p_yes, rb.p_yes, None) if ra.ok and rb.ok else (None, None, (ra.error or rb.error)[:200])
        return out


class WriteStage:
    """Writes a batch's examples shard (mined/ or mined_heldout/), then its mining_status shard (the marker)."""

    def __init__(self, cfg: MineConfig, index_uri: str):
        self.out, self.weight = storage.resolve(cfg.output), cfg.positive_weight
        self.store = PageStore(index_uri)

    def __call__(self, batch):
        import pyarrow as pa

        from docrerank.schema import examples_schema

        rows = _rows(batch)
        summary = []
        for r in rows:
            qs = json.loads(r["state"])
            kept = [q for q in qs if q["status"] in ("complete", "short")]
            pages = self.store.get([p for q in kept for p in [q["page_id"], *q["negatives"]]],
                                   ("image", "image_format", "text"))
            examples = []
            for q in kept:
                gid, w = group_id(q["query_id"]), float(len(q["negatives"])) if self.weight == "k" else 1.0
                for p, label in [(q["page_id"], 1)] + [(n, 0) for n in q["negatives"]]:
                    pg = pages[p]
                    examples.append({"group_id": gid, "query": q["text"], "page_id": p, "image": pg["image"],
                                     "image_format": pg["image_format"], "text": pg["text"], "label": label,
                                     "kind": "positive" if label else "mined", "weight": w if label else 1.0,
                                     "attribute": None})
            if examples:
                storage.write_table_atomic(self.out.join(SPLITS[r["split"]], r["name"]),
                                           pa.Table.from_pylist(examples, schema=examples_schema()))
            status = [{"query_id": q["query_id"], "page_id": q["page_id"], "query": q["text"], "split": r["split"],
                       "status": q["status"], "reason": q["reason"], "retrieved": q["retrieved"],
                       "positive_rank": q["positive_rank"], "candidates": len(q["candidates"]),
                       "negatives": q["negatives"], "false_negatives": q["false_negatives"],
                       "judge_errors": q["judge_errors"], "judgements": json.dumps(q["judged"])} for q in qs]
            storage.write_table_atomic(self.out.join("mining_status", r["name"]),
                                       pa.Table.from_pylist(status, schema=status_schema()))
            self.store.cache.clear()
            summary.append({"name": r["name"], "status": json.dumps(Counter(q["status"] for q in qs))})
        return _cols(summary)


# --- driver --------------------------------------------------------------------------------------------


def load_positives(cfg: MineConfig) -> list[dict]:
    """Input positives ``{query_id, page_id, text}`` (unique by query id, sorted by it)."""
    from docrerank.build_stages import query_id

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


def _done_shards(out: storage.Location) -> set[str]:
    """Names of finished shards; examples shards of unfinished ones (an interrupted run) are deleted."""
    done = {p.rsplit("/", 1)[-1] for p in storage.list_files(out.join("mining_status"), suffixes=(".parquet",))}
    for d in SPLITS.values():
        for f in storage.list_files(out.join(d), suffixes=(".parquet",)):
            if f.rsplit("/", 1)[-1] not in done:
                out.fs.delete_file(f)
    return done


def prepare_index(cfg: MineConfig, out: storage.Location, pages_loc: storage.Location, fraction: float,
                  hseed: int) -> tuple[dict, dict]:
    """Page->file map, the split of every page and one index per split (rebuilt only when its corpus changed).
    Returns (split of each page id, fingerprint of the corpus and the settings)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from docrerank.build_output import is_heldout

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
                                                    "positive_weight", "filter", "heldout"})
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
    """Dataset rows: the queries of each split in query-id order, ``size`` at a time, shards named by their ids.

    Finished batches are whole, so the queries left after an interruption batch up exactly as before."""
    items = []
    for split in SPLITS:
        qs = [q for q in queries if split_of_query[q["query_id"]] == split]
        for i in range(0, len(qs), size):
            chunk = qs[i:i + size]
            name = "part-" + _sha(q["query_id"] for q in chunk) + ".parquet"
            items.append({"name": name, "split": split, "state": json.dumps(chunk)})
    return items


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


def run_mine(cfg: MineConfig) -> dict:
    """Mine negatives into ``cfg.output`` on the current Ray cluster; return the stats (also mining_stats.json)."""
    import ray.data

    from docrerank import runtime
    from docrerank.build_output import is_heldout
    from docrerank.build_run import ChainStage

    t0 = time.perf_counter()
    out = storage.resolve(cfg.output)
    storage.makedirs(out)
    if not cfg.resume:
        for d in OWN_DIRS:
            if storage.exists(out.join(d)):
                out.fs.delete_dir(out.join(d).path)
    pages_loc = storage.resolve(cfg.pages) if cfg.pages else storage.resolve(cfg.input).join("pages")
    fraction, hseed = holdout_settings(cfg)
    queries = load_positives(cfg)[: cfg.limit_queries]
    split_of, fingerprint = prepare_index(cfg, out, pages_loc, fraction, hseed)
    done = _done_shards(out)
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
    statuses: Counter = Counter()
    if items:
        kw = {"cfg": cfg, "index_uri": out.join("_index").uri}
        mine = ("docrerank.mine:MineStage", kw)
        rest = [("docrerank.mine:FilterStage", kw), ("docrerank.mine:WriteStage", kw)]
        gpu = cfg.colpali.num_gpus if cfg.retriever == "colpali" else 0
        workers = min(len(items), cfg.num_workers or (1 if gpu else runtime.cluster_cpus()))
        groups = [([mine] + rest, None)]
        if not isinstance(cfg.filter.engine, str):  # one actor pool per model: the judge gets its own
            groups = [([mine], None), (rest, cfg.filter.engine.ray)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        for specs, eng in groups:
            if eng is None:
                compute, res = ray.data.ActorPoolStrategy(min_size=1, max_size=workers), \
                    {"num_cpus": cfg.num_cpus, "num_gpus": gpu or None}
            else:
                compute, res = ray.data.ActorPoolStrategy(size=eng.concurrency), \
                    {"num_cpus": eng.num_cpus, "num_gpus": eng.num_gpus or None}
            ds = ds.map_batches(ChainStage, fn_constructor_kwargs={"specs": specs}, batch_size=1, compute=compute,
                                **{k: v for k, v in res.items() if v is not None})
        for batch in ds.iter_batches(batch_size=16, batch_format="pyarrow"):
            for s in batch.column("status").to_pylist():
                statuses.update(json.loads(s))
    stats = mining_stats(out, {q["query_id"] for q in queries})
    if stats["accounted"] != stats["queries"]:
        raise RuntimeError(f"{stats['queries'] - stats['accounted']} input queries have no mining_status row")
    stats["settings"] = {**fingerprint["settings"], "holdout_fraction": fraction, "holdout_seed": hseed}
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
