"""``build_engine``: an engine from its config, through the backend registry (heavy imports happen here, per backend)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Union

from docrerank.engines.config import EngineConfig
from docrerank.engines.registry import _BACKENDS

if TYPE_CHECKING:
    from docrerank.engines.base import Engine


def construct(cfg: EngineConfig, factory) -> "Engine":
    """The engine ``factory`` (a backend registry entry: a callable, or a lazy ``"module:attr"``) builds from
    ``cfg``, a ``tiny:ARCH`` model (a random checkpoint of a real architecture, ``models.tiny``) first written to its
    local directory. Every engine is built here: ``build_engine`` in this process, a model pool's actor with the
    registry entry the driver gave it (a backend registered at run time exists only in the driver's registry)."""
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    if cfg.model.startswith("tiny:"):
        from docrerank.models.tiny import tiny_checkpoint

        cfg = cfg.model_copy(update={"model": str(tiny_checkpoint(cfg.model, "engine.model"))})
    return factory(cfg)


def build_engine(cfg: Union[EngineConfig, dict]) -> "Engine":
    """Construct the engine ``cfg.backend`` names (a dict is validated as an ``EngineConfig`` first)."""
    if isinstance(cfg, dict):
        cfg = EngineConfig.model_validate(cfg)
    assert isinstance(cfg, EngineConfig)
    return construct(cfg, _BACKENDS[cfg.backend])
