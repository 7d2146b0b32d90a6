"""``jobs.mine_negatives``'s typed config. Field docstrings are the documentation (``--help`` prints them)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions
from docrerank.engines.config import EngineConfig


class MineFilterConfig(Config):
    """The false-negative filter: is a mined page in fact an answer to the query?"""

    engine: Literal["none", "text"] | EngineConfig = "text"
    """``none``: keep every sampled page; ``text``: the model-free text-layer judge; or an engine config of a VLM
    judge (hf / vllm / http, as in the build's ``verify.engine``)."""
    prompt: str = "verify"
    """Prompt template with prompt_a and prompt_b (the build's verify prompts)."""
    threshold: Optional[float] = Field(None, gt=0, lt=1)
    """p(answerable) threshold of the two prompts. Default: 0.5 for a model judge; 0.4 for the text judge, its
    measured operating point for mining, where a false negative kept is the costly error (README, "The
    model-free engines on real documents")."""
    rule: Literal["either", "both"] = "either"
    """``either``: a page is removed when either prompt finds it answerable (the build's rule for negatives);
    ``both``: only when both do (the build's rule for positives; removes fewer pages)."""
    prefilter: Literal["none", "text"] = "text"
    """Before a model judge, remove pages whose text layer already shows them answerable (both text estimates
    >= threshold; no model call for them). Pages without text always go to the model."""

    @model_validator(mode="after")
    def _threshold(self):
        if self.threshold is None:  # the judge's own operating point (resolved here, so stages read a number)
            from docrerank.engines.verify import judge_threshold

            self.threshold = judge_threshold(None, self.engine, "mine")
        return self


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
    """A pages table (directory of Parquet); default: the one the build of ``input`` read (its stats.json
    ``sources.pages``), whatever its source was (PDFs, ``pages=``, a query-page set)."""
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
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""

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
