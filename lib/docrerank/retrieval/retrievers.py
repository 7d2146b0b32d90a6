"""First-stage retrieval: BM25 over the page text layer, a saved TREC run, or ColPali-style late interaction.

Every retriever returns a run ``{query_id: {corpus_id: score}}`` holding at most ``k`` pages per query, ranked
by :func:`docrerank.retrieval.metrics.order` (score descending, then corpus id ascending).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from docrerank.core import storage
from docrerank.retrieval.metrics import order

log = logging.getLogger(__name__)

PARAMS_FILE = "docrerank_bm25.json"
RUN_FORMAT = "qid Q0 docid rank score tag"


def top_k(scores: Mapping[str, float], k: int) -> dict[str, float]:
    """The ``k`` best of ``scores`` under the project's tie rule, in rank order."""
    return {d: float(scores[d]) for d in order(scores)[:k]}


class BM25Retriever:
    """BM25 (bm25s) over page texts; the index is built once and can be saved for workers to load.

    Pages with empty text are indexed and never match; a query whose tokens are all stopwords or out of the
    vocabulary gets no results. Only pages with a score > 0 are returned.
    """

    def __init__(self, corpus_ids: list[str], texts: list[str], k1: float = 1.5, b: float = 0.75,
                 method: str = "lucene", stopwords: str | None = "en"):
        if len(corpus_ids) != len(texts):
            raise ValueError(f"corpus_ids and texts differ in length: {len(corpus_ids)} vs {len(texts)}")
        if len(set(corpus_ids)) != len(corpus_ids):
            raise ValueError("corpus_ids has duplicates")
        self.corpus_ids = [str(c) for c in corpus_ids]
        self.params = {"k1": k1, "b": b, "method": method, "stopwords": stopwords}
        self._bm25 = self._build([t or "" for t in texts]) if self.corpus_ids else None

    def _build(self, texts: list[str]):
        import bm25s

        tokens = bm25s.tokenize(texts, stopwords=self.params["stopwords"], return_ids=True, show_progress=False)
        if not any(len(ids) for ids in tokens.ids):
            log.warning("BM25: none of the %d pages has any text token; every query will return nothing", len(texts))
            return None  # bm25s cannot index a corpus without a single token
        bm25 = bm25s.BM25(k1=self.params["k1"], b=self.params["b"], method=self.params["method"])
        bm25.index(tokens, show_progress=False)
        return bm25

    def search(self, queries: Mapping[str, str], k: int = 20) -> dict[str, dict[str, float]]:
        """Top ``k`` pages with score > 0 for each query (an empty dict when nothing matches)."""
        import bm25s
        import numpy as np

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        qids = list(queries)
        if self._bm25 is None:
            return {q: {} for q in qids}
        tokenized = bm25s.tokenize([queries[q] or "" for q in qids], stopwords=self.params["stopwords"],
                                   return_ids=False, show_progress=False)
        vocab = self._bm25.vocab_dict
        run: dict[str, dict[str, float]] = {}
        for qid, toks in zip(qids, tokenized):
            ids = [vocab[t] for t in toks if t and t in vocab]
            if not ids:
                run[qid] = {}
                continue
            scores = self._bm25.get_scores_from_ids(ids)
            hits = np.flatnonzero(scores > 0)
            run[qid] = top_k({self.corpus_ids[i]: float(scores[i]) for i in hits}, k)
        return run

    def save(self, directory: str) -> None:
        """Write the index to a local ``directory`` (created if needed)."""
        os.makedirs(directory, exist_ok=True)
        if self._bm25 is not None:
            self._bm25.save(directory, show_progress=False)
        meta = {"corpus_ids": self.corpus_ids, "params": self.params, "empty": self._bm25 is None}
        storage.write_bytes_atomic(storage.resolve(os.path.join(directory, PARAMS_FILE)), json.dumps(meta).encode())

    @classmethod
    def load(cls, directory: str) -> BM25Retriever:
        """Load an index written by :meth:`save`."""
        path = os.path.join(directory, PARAMS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {directory!r} is not a saved BM25Retriever index")
        with open(path) as f:
            meta = json.load(f)
        self = cls.__new__(cls)
        self.corpus_ids = meta["corpus_ids"]
        self.params = meta["params"]
        self._bm25 = None
        if not meta["empty"]:
            import bm25s

            self._bm25 = bm25s.BM25.load(directory, show_progress=False)
        return self


def read_trec_run(path: str) -> dict[str, dict[str, float]]:
    """Parse a TREC run file (``qid Q0 docid rank score tag`` per line; blank lines ignored)."""
    text = storage.read_bytes(storage.resolve(path)).decode("utf-8")
    run: dict[str, dict[str, float]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 6:
                raise ValueError(f"{len(parts)} fields")
            qid, _, docid, rank, score, _ = parts
            int(rank)
            value = float(score)
            if math.isnan(value):
                raise ValueError("NaN score")
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: expected '{RUN_FORMAT}', got {line!r} ({e})") from None
        if docid in run.setdefault(qid, {}):
            raise ValueError(f"{path}:{lineno}: document {docid!r} appears twice for query {qid!r}")
        run[qid][docid] = value
    return run


def write_trec_run(path: str, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
    """Write ``run`` as a TREC run file, atomically: queries sorted, ranks 1.. by the project's tie rule.

    Scores are written with ``repr`` so that reading the file back gives exactly the same floats.
    """
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be a non-empty word without whitespace, got {tag!r}")
    lines = []
    for qid in sorted(run):
        for rank, doc in enumerate(order(run[qid]), 1):
            if any(c.isspace() for c in f"{qid}{doc}") or not qid or not doc:
                raise ValueError(f"query id {qid!r} / document id {doc!r}: TREC ids must be non-empty, no whitespace")
            lines.append(f"{qid} Q0 {doc} {rank} {float(run[qid][doc])!r} {tag}\n")
    storage.write_bytes_atomic(storage.resolve(path), "".join(lines).encode("utf-8"))


class ColPaliRetriever:
    """Late-interaction (MaxSim) retrieval over page images with a colpali-engine model (GPU extra).

    The model class follows the model path (``colqwen2.5`` / ``colqwen2`` / ``colsmol``/``colidefics3`` /
    ``colpali``) unless ``model_class`` names one of colpali-engine's classes (e.g. ``"ColQwen2"``).
    """

    FAMILIES = ((("colqwen2.5", "colqwen2_5", "colqwen-2.5"), "ColQwen2_5"), (("colqwen2",), "ColQwen2"),
                (("colsmol", "colidefics3"), "ColIdefics3"), (("colpali",), "ColPali"))

    def __init__(self, model: str, device: str = "cuda", batch_size: int = 4, model_class: str | None = None):
        import torch

        try:
            import colpali_engine.models as cm
        except ImportError as e:
            raise ImportError("ColPali retrieval needs colpali-engine: pip install docrerank[gpu]") from e
        name = model_class or next((cls for keys, cls in self.FAMILIES if any(k in model.lower() for k in keys)), None)
        # processors are named ColQwen2Processor but ColQwen2_5_Processor
        processor = next((getattr(cm, p) for p in (f"{name}Processor", f"{name}_Processor") if hasattr(cm, p)), None)
        if name is None or not hasattr(cm, name) or processor is None:
            raise ValueError(f"cannot tell the colpali-engine model class of {model!r} (got {name!r}); pass "
                             f"model_class, one of {[c for _, c in self.FAMILIES]}")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = getattr(cm, name).from_pretrained(model, dtype=dtype, device_map=device).eval()
        self.processor = processor.from_pretrained(model)
        self.batch_size = batch_size
        self.device = device

    def _embed(self, items: list, kind: str) -> list:
        """One multi-vector embedding per item (on the CPU), ``batch_size`` at a time; ``kind`` "images": items are
        encoded page images, decoded one batch at a time (a corpus is never held decoded at once)."""
        import torch

        out = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            if kind == "images":
                from PIL import Image

                chunk = [Image.open(io.BytesIO(im)).convert("RGB") for im in chunk]
            batch = (self.processor.process_images(chunk) if kind == "images"
                     else self.processor.process_queries(chunk)).to(self.model.device)
            with torch.inference_mode():
                emb = self.model(**batch)
            mask = batch["attention_mask"].bool() if kind == "queries" and "attention_mask" in batch else None
            for j in range(emb.shape[0]):
                e = emb[j][mask[j]] if mask is not None else emb[j]
                out.append(e.to("cpu"))
        return out

    def search(self, queries: Mapping[str, str], corpus_ids: list[str], images: list[bytes | None],
               k: int = 20) -> dict[str, dict[str, float]]:
        """Top ``k`` pages per query by MaxSim score; every page needs its image bytes."""
        missing = [c for c, im in zip(corpus_ids, images) if not im]
        if missing:
            raise ValueError(f"{len(missing)} pages have no image (load the benchmark with load_images=True): "
                             f"{missing[:5]}")
        page_emb = self._embed(list(images), "images")
        qids = list(queries)
        query_emb = self._embed([queries[q] for q in qids], "queries")
        scores = self.processor.score_multi_vector(query_emb, page_emb, device=self.device)
        return {q: top_k(dict(zip(corpus_ids, scores[i].float().tolist())), k) for i, q in enumerate(qids)}


_LOADED: dict = {}  # (model, device, batch_size) -> ColPaliRetriever: the last one loaded, reused across datasets


def colpali_retriever(model: str, device: str, batch_size: int) -> "ColPaliRetriever":
    """The ``ColPaliRetriever`` of ``model``, loaded once and reused by every dataset of a run (one kept: a
    different model replaces it)."""
    key = (model, device, batch_size)
    if key not in _LOADED:
        _LOADED.clear()  # release the previous model before loading the next
        _LOADED[key] = ColPaliRetriever(model, device=device, batch_size=batch_size)
    return _LOADED[key]


def retrieve(benchmark: Any, kind: str, k: int, run_file: str | None = None, model: str | None = None,
             device: str = "cuda", batch_size: int = 4) -> dict[str, dict[str, float]]:
    """First-stage run for ``benchmark`` (a :class:`docrerank.eval.beir.Benchmark`), ``k`` pages per query.

    ``kind``: ``"bm25"`` (page text layer), ``"run"`` (``run_file``, a TREC run, cut to the benchmark's queries
    and to ``k``), or ``"colpali"`` (``model``, a colpali-engine checkpoint, on page images).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if kind == "bm25":
        if not any(t.strip() for t in benchmark.texts):
            raise ValueError(f"benchmark {benchmark.name!r} has no page text, so BM25 cannot rank it; load it with "
                             "text_column=..., or use kind='run' or kind='colpali'")
        return BM25Retriever(benchmark.corpus_ids, benchmark.texts).search(benchmark.queries, k)
    if kind == "run":
        if not run_file:
            raise ValueError("kind='run' needs run_file (a TREC run)")
        full = read_trec_run(run_file)
        known = set(benchmark.corpus_ids)
        unknown = sorted({d for q in benchmark.queries for d in full.get(q, {}) if d not in known})
        if unknown:
            raise ValueError(f"{run_file}: {len(unknown)} documents are not in the corpus of {benchmark.name!r}, "
                             f"e.g. {unknown[:5]}")
        absent = [q for q in benchmark.queries if q not in full]
        if absent:
            log.warning("%s: %d of %d queries of %s have no results (they score 0)", run_file, len(absent),
                        len(benchmark.queries), benchmark.name)
        return {q: top_k(full.get(q, {}), k) for q in benchmark.queries}
    if kind == "colpali":
        if not model:
            raise ValueError("kind='colpali' needs model (a colpali-engine checkpoint path or hub id)")
        retriever = colpali_retriever(model, device, batch_size)
        return retriever.search(benchmark.queries, benchmark.corpus_ids, benchmark.images, k)
    raise ValueError(f"unknown first-stage kind {kind!r}; expected 'bm25', 'run' or 'colpali'")
