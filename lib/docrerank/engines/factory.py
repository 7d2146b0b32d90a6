"""``build_engine``: an engine from its config, through the backend registry (heavy imports happen here, per backend)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Union

from docrerank.engines.config import EngineConfig
from docrerank.engines.registry import _BACKENDS

if TYPE_CHECKING:
    from docrerank.engines.base import Engine


def with_local_model(cfg: EngineConfig) -> EngineConfig:
    """``cfg`` with a ``tiny:ARCH`` model (a random checkpoint of a real architecture, ``models.tiny``) replaced by
    its local directory, written on first use; any other config as it is. Where an engine is built (here, in a
    pool's actor)."""
    if not cfg.model.startswith("tiny:"):
        return cfg
    from docrerank.models.tiny import tiny_checkpoint

    return cfg.model_copy(update={"model": str(tiny_checkpoint(cfg.model, "engine.model"))})


def build_engine(cfg: Union[EngineConfig, dict]) -> "Engine":
    """Construct the engine ``cfg.backend`` names (a dict is validated as an ``EngineConfig`` first); a
    ``tiny:ARCH`` model is written to its local directory first (``models.tiny``)."""
    if isinstance(cfg, dict):
        cfg = EngineConfig.model_validate(cfg)
    assert isinstance(cfg, EngineConfig)
    cfg = with_local_model(cfg)
    factory = _BACKENDS[cfg.backend]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(cfg)
