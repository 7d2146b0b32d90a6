"""``jobs.evaluate``'s typed config. Field docstrings are the documentation (``--help``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions
from docrerank.models.config import RerankerSpec
from docrerank.retrieval.metrics import DEFAULT_METRICS


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

    part: Literal["all", "validation", "test"] = "all"
    """build: half of the split's documents (a seeded hash of the document id): ``validation`` for choices (the
    fusion weight, the training's best step), ``test`` for the reported numbers; ``all``: every document."""

    questions: Optional[str] = None
    """build: a questions file (JSONL like ``positives_file``, optionally ``relevant``: every page that answers)
    whose questions about the split's documents are the queries, instead of the split's positive groups."""

    seed: int = 0
    """build: seed of the split into parts (the training's ``data.ranking_validation.seed`` must match)."""

    @property
    def key(self) -> tuple:
        """What identifies the data (to keep validation and test apart)."""
        return (self.path.rstrip("/"), self.split, self.part, self.seed, self.questions)


class FusionConfig(Config):
    """Fuse each reranker's scores with the first stage's (``retrieval/fusion.py``) and report the fused system too;
    the reranker's weight is chosen on a validation dataset, never on the reported ones."""

    method: Literal["none", "interpolate", "rrf"] = "none"
    """``interpolate``: weighted sum of min-max normalised scores per query; ``rrf``: weighted reciprocal rank
    fusion; ``none``: no fused systems."""

    validation: Optional[DatasetSpec] = None
    """The dataset the weight is chosen on (e.g. the build's held-out ``part: validation``); required unless
    ``weight`` is set; must not be one of ``datasets``."""

    weights: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    """Candidate weights of the reranker (0: the first stage alone, 1: the reranker alone); the best on the
    validation dataset's primary metric wins (ties: the first in this list)."""

    weight: Optional[float] = Field(None, ge=0, le=1)
    """A fixed weight instead of choosing one."""

    rrf_k: int = Field(60, ge=1)
    """rrf: the rank offset k."""


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

    fusion: FusionConfig = Field(default_factory=FusionConfig)
    """Also report each reranker fused with the first stage (``<first>+<reranker>+fused``)."""

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
        f = self.fusion
        if f.method != "none":
            if f.weight is None and f.validation is None:
                raise ValueError("fusion.validation: required to choose the weight (or set fusion.weight)")
            if f.validation is not None and any(d.key == f.validation.key for d in self.datasets):
                raise ValueError(f"fusion.validation: {f.validation.path} (part {f.validation.part}) is also one of "
                                 "datasets; choose the weight on data that is not reported")
            if any(not 0 <= w <= 1 for w in f.weights) or not f.weights:
                raise ValueError(f"fusion.weights: expected weights in [0, 1], got {f.weights}")
        names = [r.name for r in self.rerankers if r.name]
        if len(set(names)) != len(names):
            raise ValueError(f"rerankers[].name: names must be unique, got {names}")
        return self
