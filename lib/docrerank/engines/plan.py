"""What an engine config costs, for the plans of the jobs that use engines (build, mining filter): GPUs and CPUs
per actor, image tokens of a page, prompt tokens of a template, whether a page's prefix is encoded once, and the
GPU time of a stage's calls. Pure: nothing is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from docrerank.core.plan import PlanOptions, fmt_count, fmt_hours, gpu_seconds, throughput_for
from docrerank.engines.config import EngineConfig

CHARS_PER_TOKEN = 4.0  # English prompt text in BPE vocabularies of this size; an estimate, said so in the report


def gpus_per_actor(engine: EngineConfig) -> float:
    """GPUs one actor of ``engine`` holds (``engines.pool.actor_shape``: vLLM's tensor x pipeline parallel size,
    else ``ray.num_gpus``); 0 for an http engine (the endpoint's GPUs are not the cluster's)."""
    if engine.backend == "http":
        return 0.0
    from docrerank.engines.pool import actor_shape

    try:
        return float(actor_shape(engine).gpus)
    except ValueError:  # a config that cannot run: the pool plan reports why
        return float(engine.ray.num_gpus or 0)


def text_tokens(text: str) -> int:
    """Tokens of ``text``, estimated from its length."""
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def reuses_prefix(engine: EngineConfig) -> bool:
    """Whether checks of one page share the encoding of its [image][instruction] prefix (vLLM prefix caching, the
    hf engine's prefix reuse); an http endpoint is assumed not to."""
    if engine.backend == "vllm":
        return engine.vllm.enable_prefix_caching
    if engine.backend == "hf":
        return engine.hf.prefix_reuse
    return False


@dataclass
class StageCost:
    """Model calls of one stage and what they cost."""

    stage: str
    model: str
    calls: float
    prompt_tokens: float  # tokens the model must encode (shared prefixes counted once when reused)
    output_tokens: float
    gpu_s: Optional[float]
    figure: str

    def row(self) -> list:
        """The stage's row in the plan's ``stages`` table."""
        return [self.stage, self.model, fmt_count(self.calls), fmt_count(self.prompt_tokens),
                fmt_count(self.output_tokens), fmt_hours(self.gpu_s)]


STAGE_HEADER = ["stage", "model", "calls", "prompt tokens", "output tokens", "GPU-h"]


def stage_cost(stage: str, engine: EngineConfig, calls: float, prompt_tokens: float, output_tokens: float,
               opts: PlanOptions) -> StageCost:
    """The GPU time of a stage's calls on ``engine``'s actors (none for http engines: not the cluster's GPUs)."""
    figure, source = throughput_for(engine.model, opts)
    gpus = gpus_per_actor(engine)
    if engine.backend == "http" or gpus == 0:
        return StageCost(stage, engine.model, calls, prompt_tokens, output_tokens, 0.0 if gpus == 0 else None,
                         "no cluster GPU (http endpoint or CPU actors)")
    return StageCost(stage, engine.model, calls, prompt_tokens, output_tokens,
                     gpu_seconds(prompt_tokens, output_tokens, figure, gpus), source)
