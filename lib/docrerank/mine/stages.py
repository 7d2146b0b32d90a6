"""The mining job's Ray Data stages: retrieve (``MineStage``), filter (``FilterStage``), write (``WriteStage``).

One dataset row = one batch of queries (``name`` of its shard, ``split``, ``state``: a list of ``MinedQuery``, typed
as ``list<mined_query_type()>``, as the build carries ``PageState``); the stages run chained in ``core.raydata.ChainStage`` actors (``run_mine`` passes them by class). Also the pieces they
load once per actor: ``PageStore`` (pages by id) and ``Searcher`` (a split's index). The false-negative filter
judges with ``engines.verify``, the build's two-prompt verification.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from docrerank.core import storage
from docrerank.engines.verify import VerifyItem, verify
from docrerank.mine.config import MineConfig
from docrerank.mine.logic import (
    SPLITS,
    MinedQuery,
    MineStatus,
    Split,
    batches_from_arrow,
    batches_to_arrow,
    candidates_of,
    finish_status,
    group_rows,
    seeded_order,
    select_negatives,
    status_row,
    status_schema,
)

# --- pages and indexes ---------------------------------------------------------------------------------


class PageStore:
    """Reads pages by id, only from the files that hold them (the page->file map is built once by the driver)."""

    def __init__(self, index_uri: str):
        loc = storage.resolve(index_uri)
        t = storage.read_parquet_dir(loc.join("page_files"))
        self.file_of = dict(zip(t.column("page_id").to_pylist(), t.column("file").to_pylist()))
        self.cache: dict[str, dict] = {}

    def get(self, ids, columns: tuple[str, ...] = ("text",)) -> dict[str, dict]:
        """The pages ``ids`` (those that exist) with ``columns``, read once and cached."""
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


class Searcher:
    """A loaded index of one split: ``search({qid: text}, k) -> {qid: {page_id: score}}``."""

    def __init__(self, kind: str, index_uri: str, colpali: dict, model=None):
        local = _fetch_dir(storage.resolve(index_uri))
        self.kind = kind
        if kind == "bm25":
            from docrerank.retrieval.retrievers import BM25Retriever

            self.bm25 = BM25Retriever.load(local)
            return
        import os

        import torch

        from docrerank.retrieval.retrievers import ColPaliRetriever

        self.model = model or ColPaliRetriever(colpali["model"], colpali["device"], colpali["batch_size"],
                                               colpali["model_class"])
        data = torch.load(os.path.join(local, "colpali.pt"))
        self.ids, self.emb = data["ids"], data["emb"]

    def search(self, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
        """The top ``k`` pages of each query: ``{query_id: {page_id: score}}``."""
        if self.kind == "bm25":
            return self.bm25.search(queries, k)
        from docrerank.retrieval.retrievers import top_k

        if not self.ids:
            return {q: {} for q in queries}
        qids = list(queries)
        q_emb = self.model._embed([queries[q] for q in qids], "queries")
        scores = self.model.processor.score_multi_vector(q_emb, self.emb, device=self.model.device)
        return {q: top_k(dict(zip(self.ids, scores[i].float().tolist())), k) for i, q in enumerate(qids)}


# --- Ray Data stages -----------------------------------------------------------------------------------


def _with_state(batch, batches: list[list[MinedQuery]]):
    """``batch`` (a pyarrow Table) with its ``state`` column replaced by ``batches``."""
    return batch.set_column(batch.schema.get_field_index("state"), "state", batches_to_arrow(batches))


class MineStage:
    """Retrieve the top N of each query in its split's index, drop the positive, put the rest in seeded order."""

    batch_format = "pyarrow"

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
        batches = batches_from_arrow(batch.column("state"))
        for split, qs in zip(batch.column("split").to_pylist(), batches):
            self.mine(split, qs)
        return _with_state(batch, batches)

    def mine(self, split: Split, qs: list[MinedQuery]) -> None:
        """Set every query's candidates and seeded order (or its skip reason) in place."""
        todo = []
        for i, q in enumerate(qs):
            q = qs[i] = MinedQuery(q.query_id, q.page_id, q.text)  # a fresh state: nothing of an earlier stage
            if split == "heldout" and self.cfg.heldout == "skip":
                q.skip("heldout_not_mined")
            elif not (q.text or "").strip():
                q.skip("no_query_text")
            elif q.page_id not in self.store.file_of:
                q.skip("page_not_found")
            else:
                todo.append(q)
        if not todo:
            return
        run = self._searcher(split).search({q.query_id: q.text for q in todo}, self.cfg.top_n)
        for q in todo:
            hits = run.get(q.query_id, {})
            q.candidates, q.positive_rank = candidates_of(hits, q.page_id, self.cfg.top_n)
            q.retrieved = min(len(hits), self.cfg.top_n)
            q.order = seeded_order(q.candidates, self.cfg.seed, q.query_id)


class FilterStage:
    """Pick each query's negatives from its seeded order, judging candidates with the false-negative filter."""

    batch_format = "pyarrow"

    def __init__(self, cfg: MineConfig, index_uri: str, pools=None):
        self.cfg, self.f = cfg, cfg.filter
        self.store = PageStore(index_uri)
        self.judge_with: Any = self.f.engine  # "none", "text", or an engine
        self.prompt = None
        if not isinstance(self.f.engine, str):  # the run's model pool (``engines.pool_ray``), or one built here
            from docrerank.engines import build_engine
            from docrerank.prompts import load_prompt

            self.judge_with = pools.client("filter") if pools is not None else build_engine(self.f.engine)
            self.prompt = load_prompt(self.f.prompt)

    def __call__(self, batch):
        batches = batches_from_arrow(batch.column("state"))
        for qs in batches:
            todo = [q for q in qs if q.status is None]
            select_negatives(todo, self.cfg.k, None if self.f.engine == "none" else self.judge, self.f.threshold,
                             self.f.rule)
            for q in todo:
                finish_status(q, self.cfg.k, self.cfg.min_negatives)
        self.store.cache.clear()
        return _with_state(batch, batches)

    def judge(self, jobs: list[tuple[MinedQuery, str]]) -> list[tuple[float | None, float | None, str | None]]:
        """(p_a, p_b, error) per (query, page): the text judge, or the VLM's two verify prompts."""
        model = not isinstance(self.judge_with, str)
        pages = self.store.get([p for _, p in jobs], ("text", "image") if model else ("text",))
        found = [i for i, (_, p) in enumerate(jobs) if p in pages]
        items = [VerifyItem(jobs[i][0].text, pages[jobs[i][1]].get("text") or "", pages[jobs[i][1]].get("image"),
                            id=jobs[i][1]) for i in found]
        # in front of a model, the text layer only removes what both of its estimates find answerable
        judged = verify(items, self.judge_with, self.prompt, threshold=self.f.threshold,
                        prefilter=self.f.prefilter if model else "none")
        out: list = [(None, None, "page_not_found")] * len(jobs)
        for i, j in zip(found, judged):
            out[i] = (j.p_a, j.p_b, j.error)
        return out


class WriteStage:
    """Writes a batch's examples shard (mined/ or mined_heldout/), then its mining_status shard (the marker).
    Returns one row per batch: its name and how many of its queries ended in each status."""

    batch_format = "pyarrow"
    STATUSES: tuple[MineStatus, ...] = ("complete", "short", "skipped")

    def __init__(self, cfg: MineConfig, index_uri: str):
        self.out = storage.resolve(cfg.output)
        self.store = PageStore(index_uri)

    def __call__(self, batch):
        import pyarrow as pa

        from docrerank.core.schema import examples_schema

        names, splits = batch.column("name").to_pylist(), batch.column("split").to_pylist()
        counts: dict[str, list[int]] = {s: [] for s in self.STATUSES}
        for name, split, qs in zip(names, splits, batches_from_arrow(batch.column("state"))):
            kept = [q for q in qs if q.status in ("complete", "short")]
            pages = self.store.get([p for q in kept for p in [q.page_id, *q.negatives]],
                                   ("image", "image_format", "text"))
            examples = [e for q in kept for e in group_rows(q, pages)]
            if examples:
                storage.write_table_atomic(self.out.join(SPLITS[split], name),
                                           pa.Table.from_pylist(examples, schema=examples_schema()))
            status = [status_row(q, split) for q in qs]
            storage.write_table_atomic(self.out.join("mining_status", name),
                                       pa.Table.from_pylist(status, schema=status_schema()))
            self.store.cache.clear()
            n = Counter(q.status for q in qs)
            for s in self.STATUSES:
                counts[s].append(n[s])
        return pa.table({"name": pa.array(names, pa.string()), **{s: pa.array(c, pa.int64()) for s, c in counts.items()}})
