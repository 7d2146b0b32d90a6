"""Reranker training: backbones (``vlm``: Qwen2-VL-family True/False logits; ``text``: a cross-encoder over the
page text layer), collate (examples -> whole groups -> batches), losses, the DeepSpeed config builder, the single
training step (no Ray needed), the Ray Train glue and the model export.

Nothing heavy is imported here: torch, transformers, DeepSpeed and Ray are imported inside the modules that
need them, so ``from docrerank.train.config import TrainConfig`` stays cheap.
"""

from __future__ import annotations

__all__ = ["TrainConfig"]


def __getattr__(name: str):
    if name == "TrainConfig":
        from docrerank.train.config import TrainConfig

        return TrainConfig
    raise AttributeError(name)
