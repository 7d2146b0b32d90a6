"""Qwen2-VL-family inputs shared by the engines and training: the image processor without torchvision.

transformers 5.x cannot build ``Qwen2VLProcessor`` without torchvision (its video processor lookup fails), so
both the hf engine and the vlm training backbone compose the PIL image processor with the tokenizer themselves.
"""

from __future__ import annotations


def image_processor(preprocessor_config: dict, min_pixels: int | None, max_pixels: int):
    """``Qwen2VLImageProcessorPil`` with a checkpoint's ``preprocessor_config.json`` values and the pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pre = preprocessor_config or {}
    size = pre.get("size") or {}
    low = min_pixels or pre.get("min_pixels") or size.get("shortest_edge") or 56 * 56
    kwargs = {k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
              if k in pre}
    return Qwen2VLImageProcessorPil(min_pixels=min(low, max_pixels), max_pixels=max_pixels, **kwargs)
