"""A docrerank reranker as an mteb v2 cross-encoder, for mteb's reranking evaluation.

    import mteb
    from docrerank.eval.mteb_adapter import MtebReranker

    model = MtebReranker("out/train_local")                  # whatever Reranker.load takes, either backbone
    task = mteb.get_task("Vidore3FinanceEnBM25sReranking.v2")  # a reranking task ships its first-stage candidates
    result = mteb.evaluate(model, task, encode_kwargs={"batch_size": 32})

mteb v2 runs a ``CrossEncoderProtocol`` model (a ``predict(inputs1, inputs2, ...)`` method and an
``mteb_model_meta`` property) on a retrieval task that has ``top_ranked`` candidates per query: the ViDoRe V3
reranking tasks (``Vidore3<Domain>{BM25s,BGEm3,Qwen3VLEmbedding2B,Nemotron35Embed8B}Reranking.v2``), or any
retrieval task after ``task.convert_to_reranking(<prediction_folder of a first-stage run>, top_k=20)``, e.g. ViDoRe
V2 (``Vidore2ESGReportsRetrieval``, ``Vidore2EconomicsReportsRetrieval``, ``Vidore2BioMedicalLecturesRetrieval``,
``Vidore2ESGReportsHLRetrieval``), ViDoRe V3 (``Vidore3<Domain>Retrieval.v2``) and REAL-MM-RAG
(``RealMMRAGFinReportRetrieval``, ``RealMMRAGFinSlidesRetrieval``, ``RealMMRAGTechReportRetrieval``,
``RealMMRAGTechSlidesRetrieval``).

``predict`` reads the two dataloaders in step (row i of each is one pair: the query's ``text``, the document's
``id``, ``image`` and ``text``), collects ``chunk_pairs`` pairs and scores them with ``Reranker.score``, which
sorts them, encodes each distinct page once per batch and returns scores in input order. A document's ``id`` is its
page key, so the candidates that several queries share are recognised as one page. The vlm backbone reads the page
image, the text backbone the document text (a task whose documents are images only gives it empty pages, logged).
Pages that cannot be read score -inf (they rank last; mteb needs finite order, not NaN). mteb is imported inside
the methods only.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

from docrerank.models.pages import Page
from docrerank.models.reranker import Reranker

log = logging.getLogger(__name__)


class MtebReranker:
    """mteb's ``CrossEncoderProtocol`` over a docrerank ``Reranker`` (see the module docstring)."""

    def __init__(self, model_name: str, revision: Optional[str] = None, device: Optional[str] = None, *,
                 reranker: Optional[Reranker] = None, name: Optional[str] = None, chunk_pairs: int = 512,
                 **load_kwargs: Any):
        """Load ``model_name`` with ``Reranker.load`` (``device`` default auto; ``load_kwargs``: its other
        arguments), or wrap a loaded ``reranker``. ``name``: the model name in mteb's results (default
        ``docrerank/<reranker name>``); ``chunk_pairs``: pairs handed to ``Reranker.score`` at once."""
        if chunk_pairs < 1:
            raise ValueError(f"chunk_pairs: expected >= 1, got {chunk_pairs}")
        self.reranker = reranker or Reranker.load(model_name, device=device or "auto", **load_kwargs)
        self.name = name or f"docrerank/{self.reranker.name.strip('/').replace('/', '-')}"
        self.revision = revision
        self.chunk_pairs = chunk_pairs
        self.pairs_scored = 0

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta``: a cross-encoder with this name, on text queries and image (vlm) or text pages."""
        from mteb.models.model_meta import ModelMeta

        modalities = ["text", "image"] if self.reranker.backbone == "vlm" else ["text"]
        return ModelMeta.create_empty(overwrites={
            "name": self.name, "revision": self.revision or "local", "model_type": ["cross-encoder"],
            "modalities": modalities, "framework": ["PyTorch", "Transformers"], "open_weights": True})

    def predict(self, inputs1: Any, inputs2: Any, *, task_metadata: Any = None, hf_split: str = "",
                hf_subset: str = "", prompt_type: Any = None, **kwargs: Any) -> Any:
        """float32 scores of the pairs (row i of ``inputs1`` with row i of ``inputs2``); higher = more relevant."""
        import numpy as np

        scores: list[float] = []
        queries: list[str] = []
        pages: list[Page] = []
        warned = False
        for qb, db in zip(inputs1, inputs2, strict=True):
            texts = list(qb["text"])
            batch_pages = self.pages_of(db, len(texts))
            if self.reranker.backbone == "text" and not warned and not any(p.text for p in batch_pages):
                log.warning("%s: the text backbone got documents without text (task %s): they score as empty pages",
                            self.name, getattr(task_metadata, "name", "?"))
                warned = True
            queries += texts
            pages += batch_pages
            if len(queries) >= self.chunk_pairs:
                scores += self._score(queries, pages)
                queries, pages = [], []
        if queries:
            scores += self._score(queries, pages)
        return np.asarray(scores, dtype=np.float32)

    def _score(self, queries: list[str], pages: list[Page]) -> list[float]:
        import numpy as np

        s = self.reranker.score(queries, pages)
        self.pairs_scored += len(s)
        return np.where(np.isnan(s), -np.inf, s).tolist()

    @staticmethod
    def pages_of(batch: dict, n: int) -> list[Page]:
        """The documents of one mteb batch as ``Page``s keyed by document id (without ids: by the image object, else
        the text's hash)."""
        ids = batch.get("id")
        images = batch.get("image") or [None] * n
        texts = batch.get("text") or [""] * n
        if len(images) != n or len(texts) != n:
            raise ValueError(f"document batch: {len(images)} images and {len(texts)} texts for {n} queries (expected "
                             "the query and document dataloaders to have the same batch size)")
        pages = []
        for i in range(n):
            text = texts[i] or ""
            if ids is not None:
                key = str(ids[i])
            elif images[i] is not None:
                key = f"pil:{id(images[i])}"
            else:
                key = "text:" + hashlib.sha1(text.encode()).hexdigest()
            pages.append(Page(key, image=images[i], text=text))
        return pages
