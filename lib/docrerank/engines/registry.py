"""The backend registry: backend name -> factory (``EngineConfig -> Engine``).

The built-in backends are registered as lazy ``"module:attr"`` paths, so looking a name up imports nothing heavy;
``engines.factory.build_engine`` imports the backend (and its torch, vllm or httpx) when an engine is built.
``engines.config`` validates ``EngineConfig.backend`` against this registry, so this module imports no config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    from docrerank.engines.base import Engine

Factory = Callable[[Any], "Engine"]
"""Builds an engine from an ``EngineConfig``."""

_BACKENDS: dict[str, Union[str, Factory]] = {
    "hf": "docrerank.engines.hf:HFEngine",
    "vllm": "docrerank.engines.vllm:VLLMEngine",
    "http": "docrerank.engines.http:HTTPEngine",
}


def register_backend(name: str, factory: Union[str, Factory]) -> None:
    """Add a backend: a callable ``EngineConfig -> Engine`` or a lazy ``"module:attr"`` path to one.

    ``EngineConfig.backend`` accepts the name from then on, and ``EngineConfig.options`` carries the backend's
    settings. Used for engines outside this package (e.g. a test fake); the model-free ``given``/``rules``/``text``
    steps of the pipelines are not engines and are not registered here: the stages call ``docrerank.lexical``
    directly when their config names them.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"backend name: got {name!r}, expected a non-empty string")
    if not (callable(factory) or (isinstance(factory, str) and factory.count(":") == 1)):
        raise TypeError(f"backend {name!r}: got factory {factory!r}, expected a callable or 'module:attr'")
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    """Names ``EngineConfig.backend`` accepts."""
    return sorted(_BACKENDS)
