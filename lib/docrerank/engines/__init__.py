"""Model engines: one small interface over transformers, vLLM and OpenAI-compatible endpoints.

    from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, build_engine, user
    engine = build_engine(EngineConfig(backend="hf", model="Qwen/Qwen2-VL-2B-Instruct"))
    [r] = engine.judge([JudgeRequest([user(page_png, "Can this page answer: ...? Answer Yes or No.")])])
    r.p_yes   # P("Yes") against P("No") from the next-token logits

Modules: ``requests`` (request/result types, error kinds), ``parsing`` (JSON repair, refusals, logprob maths),
``base`` (the ``Engine`` protocol, ``TextEngine``), ``registry`` (backend names -> factories), ``config``
(``EngineConfig``), ``messages``, and the backends ``hf``, ``vllm``, ``http``. Importing this package is light:
torch, transformers, vllm, ray and httpx load inside the backend that needs them.
"""

from docrerank.engines.base import Engine, EngineDeadError, TextEngine
from docrerank.engines.config import EngineConfig, HFOptions, HTTPOptions, RayStageConfig, VLLMOptions
from docrerank.engines.factory import build_engine
from docrerank.engines.messages import ImagePart, Message, TextPart, assistant, system, user
from docrerank.engines.parsing import parse_json
from docrerank.engines.registry import available_backends, register_backend
from docrerank.engines.requests import (
    ERROR_KINDS,
    UNFINISHED_KINDS,
    GenerateRequest,
    GenerateResult,
    JudgeRequest,
    JudgeResult,
    SamplingParams,
    count_errors,
    error_kind,
)

__all__ = [
    "ERROR_KINDS",
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "GenerateRequest",
    "GenerateResult",
    "HFOptions",
    "HTTPOptions",
    "ImagePart",
    "JudgeRequest",
    "JudgeResult",
    "Message",
    "RayStageConfig",
    "SamplingParams",
    "TextEngine",
    "TextPart",
    "UNFINISHED_KINDS",
    "VLLMOptions",
    "assistant",
    "available_backends",
    "build_engine",
    "count_errors",
    "error_kind",
    "parse_json",
    "register_backend",
    "system",
    "user",
]
