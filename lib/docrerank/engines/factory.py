"""``build_engine``: an engine from its config, through the backend registry (heavy imports happen here, per backend)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Union

from docrerank.engines.config import EngineConfig
from docrerank.engines.registry import _BACKENDS

if TYPE_CHECKING:
    from docrerank.engines.base import Engine


def build_engine(cfg: Union[EngineConfig, dict]) -> "Engine":
    """Construct the engine ``cfg.backend`` names (a dict is validated as an ``EngineConfig`` first)."""
    if isinstance(cfg, dict):
        cfg = EngineConfig.model_validate(cfg)
    assert isinstance(cfg, EngineConfig)
    factory = _BACKENDS[cfg.backend]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(cfg)
