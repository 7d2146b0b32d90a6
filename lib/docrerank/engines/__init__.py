"""Model engines: one small interface over transformers, vLLM and OpenAI-compatible endpoints.

    from docrerank.engines import EngineConfig, GenerateRequest, JudgeRequest, build_engine, user
    engine = build_engine(EngineConfig(backend="hf", model="Qwen/Qwen2-VL-2B-Instruct"))
    [r] = engine.judge([JudgeRequest([user(page_png, "Can this page answer: ...? Answer Yes or No.")])])
    r.p_yes   # P("Yes") against P("No") from the next-token logits

Importing this package is light: torch, transformers, vllm, ray and httpx load inside the backend that needs
them. ``register_backend`` adds backends (e.g. model-free ones) without touching this package.
"""

import importlib
from typing import Union

from docrerank.engines.base import (
    _BACKENDS,
    ERROR_KINDS,
    Engine,
    EngineConfig,
    GenerateRequest,
    GenerateResult,
    HFOptions,
    HTTPOptions,
    JudgeRequest,
    JudgeResult,
    RayStageConfig,
    SamplingParams,
    TextEngine,
    VLLMOptions,
    Factory,
    count_errors,
    error_kind,
    parse_json,
)
from docrerank.engines.messages import ImagePart, Message, TextPart, assistant, system, user



def register_backend(name: str, factory: Union[str, Factory]) -> None:
    """Add a backend: a callable ``EngineConfig -> Engine`` or a lazy ``"module:attr"`` path to one.

    This is how model-free engines (rules, text layer) plug in; ``EngineConfig.backend`` accepts the name
    from then on and ``EngineConfig.options`` carries their settings.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"backend name: got {name!r}, expected a non-empty string")
    if not (callable(factory) or (isinstance(factory, str) and factory.count(":") == 1)):
        raise TypeError(f"backend {name!r}: got factory {factory!r}, expected a callable or 'module:attr'")
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    """Names ``EngineConfig.backend`` accepts."""
    return sorted(_BACKENDS)


def build_engine(cfg: Union[EngineConfig, dict]) -> Engine:
    """Construct the engine ``cfg.backend`` names (its heavy imports happen now, not at import time)."""
    if isinstance(cfg, dict):
        cfg = EngineConfig.model_validate(cfg)
    factory = _BACKENDS[cfg.backend]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(cfg)


__all__ = [
    "ERROR_KINDS",
    "Engine",
    "EngineConfig",
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
