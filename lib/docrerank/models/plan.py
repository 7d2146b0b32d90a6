"""The model side of a plan, shared by the rerank job's and the evaluation's: ``reranker_cost`` (the scoring
estimate) and ``model_row`` (a model's row in a plan's ``models`` table).

GPU time: the project's measured figure, 46.9 pairs/s for a 2B Qwen2-VL reranker with 1024-token pages on one
H100 (``bench/results/rerank_pairs_per_s_cuda_vlm_2b.json``), through ``core.plan.throughput_for`` (a
configured ``plan.throughput`` for the base model wins).
"""

from __future__ import annotations

from typing import Optional

from docrerank.core.plan import PlanOptions, throughput_for
from docrerank.models.sources import ModelSource, trained_base

PAIR_TOKENS = 1024 + 70  # a page at the default pixel cap and the MonoQwen prompt with a query


def reranker_cost(path: str, pairs: Optional[int], device: str, opts: PlanOptions) -> tuple[Optional[float], str]:
    """(GPU-seconds to score ``pairs`` pairs with the reranker at ``path``, the figure used); (0, ...) on the CPU."""
    if device != "cuda":
        return 0.0, "CPU: no GPU time"
    base = trained_base(path) or path
    figure, source = throughput_for(base, opts)
    if figure is None or pairs is None:
        return None, source
    return pairs * PAIR_TOKENS / figure.prompt_tokens_per_s, source


def model_row(src: ModelSource) -> list:
    """The row of a model in a plan's ``models`` table."""
    return [src.name, src.kind, src.where, src.files, src.gated]
