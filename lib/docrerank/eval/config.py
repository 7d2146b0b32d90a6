"""``jobs.evaluate``'s typed config. Field docstrings are the documentation (``--help``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions
from docrerank.eval.metrics import DEFAULT_METRICS
from docrerank.rerank.config import RerankerSpec


class DatasetSpec(Config):
    """One benchmark: a BEIR-layout directory (ViDoRe V2, REAL-MM-RAG as published) or a dataset build's output."""

    path: str
    """Local directory or any pyarrow filesystem URI (s3://, gs://, ...). Nothing is downloaded."""

    name: Optional[str] = None
    """Name in the report; default: the directory's name (a build output: ``<name>-<split>``)."""

    format: Literal["auto", "beir", "build"] = "auto"
    """``beir``: corpus/ queries/ qrels/ tables. ``build``: a ``jobs.build_dataset`` output (queries = the positive
    queries of a split, corpus = every page of that split's documents). ``auto``: build when the directory has
    ``examples_heldout/`` or ``examples/``, else beir."""

    split: Optional[str] = None
    """beir: the shard prefix when the tables hold several splits (default ``test``); build: ``heldout`` (default)
    or ``train``."""

    text_column: Optional[str] = None
    """beir: the corpus column holding the page text (BM25 needs one); default: the first of text/markdown/ocr..."""

    language: Optional[str] = None
    """beir: keep the queries of this language (multilingual ViDoRe V2 sets)."""

    run_file: Optional[str] = None
    """A first-stage run (TREC format) for this dataset; required when ``first_stage.kind`` is ``run``."""


class FirstStageConfig(Config):
    """The retriever whose top-k the rerankers re-sort."""

    kind: Literal["bm25", "run", "colpali"] = "bm25"
    """``bm25``: bm25s over the page text layer (CPU). ``run``: each dataset's ``run_file``. ``colpali``: a
    ColQwen2/ColPali checkpoint through colpali-engine (GPU; ``pip install docrerank[gpu]``)."""

    top_k: int = Field(20, ge=1)
    """Pages per query retrieved and reranked (the paper: 20)."""

    model: Optional[str] = None
    """colpali: checkpoint directory or hub id in the local cache (e.g. vidore/colqwen2-v1.0)."""

    batch_size: int = Field(4, ge=1)
    """colpali: pages per forward pass."""

    @property
    def label(self) -> str:
        """The first stage's name in run files and the report."""
        return {"bm25": "bm25", "run": "run", "colpali": "colpali"}[self.kind]


class EvalConfig(Config):
    """Evaluate rerankers on benchmarks as the paper does: first-stage top-k, reranked, NDCG@5 and friends."""

    output: str
    """Directory for runs/<dataset>/<system>.trec, metrics.json, report.md and the plot."""

    datasets: list[DatasetSpec] = Field(min_length=1)
    """Benchmarks, reported one row each plus their average."""

    first_stage: FirstStageConfig = Field(default_factory=FirstStageConfig)
    """The retriever (retrieval-only is always the first system of the report)."""

    rerankers: list[RerankerSpec] = Field(default_factory=list)
    """Rerankers, evaluated side by side on the same first-stage candidates; empty = retrieval only."""

    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Metrics (ndcg, recall, mrr, precision, map with @k), trec_eval definitions."""

    primary: str = "ndcg@5"
    """The metric of the plot and of the significance column."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where rerankers run; auto = cuda when available."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Reranker weights dtype; auto = bfloat16 on GPU, float32 on CPU (scores are float32 either way)."""

    max_queries: Optional[int] = Field(None, ge=1)
    """Evaluate only the first N queries (by id) of each dataset: quick checks."""

    n_resamples: int = Field(10_000, ge=100)
    """Paired randomization test: sign flips drawn (seeded)."""

    resume: bool = True
    """Reuse a reranked run already written for the same reranker, first stage and top-k."""
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        if self.first_stage.kind == "run":
            missing = [d.path for d in self.datasets if not d.run_file]
            if missing:
                raise ValueError(f"first_stage.kind=run needs datasets[].run_file, missing for {missing}")
        if self.first_stage.kind == "colpali" and not self.first_stage.model:
            raise ValueError("first_stage.model: required when first_stage.kind is colpali")
        if self.primary not in self.metrics:
            raise ValueError(f"primary: {self.primary!r} is not in metrics {self.metrics}")
        names = [r.name for r in self.rerankers if r.name]
        if len(set(names)) != len(names):
            raise ValueError(f"rerankers[].name: names must be unique, got {names}")
        return self
