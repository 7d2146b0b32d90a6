"""``jobs.rerank``'s typed config (the reranker spec it shares with evaluation: ``models.config``)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions
from docrerank.models.config import RerankerSpec


class RerankConfig(Config):
    """Score (query, candidate page) pairs from Parquet with a reranker: a resumable Ray Data job."""

    # a rerun keeps the row groups already scored (``core.rerun``) unless ``resume=false``
    resume_marker: ClassVar[Optional[str]] = "scores"
    run_only_keys: ClassVar[tuple[str, ...]] = ("output", "num_actors", "cpus_per_actor", "resume", "device",
                                                "reranker.batch_size", "plan", "plan.*")
    resume_key: ClassVar[Optional[str]] = "resume"

    input: str
    """Parquet file or directory of pairs: a query column, a page id column and the page inline (image and/or
    text columns), or page ids looked up in ``pages``."""

    output: str
    """Directory for scores/ (one Parquet part per input row group) and _meta/."""

    reranker: RerankerSpec
    """The model."""

    pages: Optional[str] = None
    """A pages table (e.g. a build's pages/) to look page ids up in when the input has no inline pages."""

    query_column: str = "query"
    """Column with the query text."""

    query_id_column: Optional[str] = None
    """Column identifying a query (ranks are per query id and input row group); default: ``query_id`` when present,
    else a hash of the query text."""

    page_id_column: str = "page_id"
    """Column with the page id."""

    keep_columns: list[str] = Field(default_factory=list)
    """Extra input columns copied to the output (e.g. label, group_id)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: one GPU per actor when the cluster has GPUs, else CPU actors."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto = bfloat16 on GPU, float32 on CPU."""

    num_actors: Optional[int] = Field(None, ge=1)
    """Scoring actors; default: the cluster's GPUs (GPU) or one (CPU)."""

    cpus_per_actor: float = Field(1.0, gt=0)
    """CPUs reserved per actor."""

    resume: bool = True
    """Skip the input row groups whose scores are already written; false scores everything again."""
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""
