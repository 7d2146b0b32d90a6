"""Image tokens of a page, one rule per model family: the language model sees one token per ``side`` x ``side``
pixels of the resized image (Qwen2-VL and Qwen2.5-VL: 14-pixel patches merged 2x2 = 28; Qwen3-VL: 16-pixel
patches merged 2x2 = 32; Pixtral: 16). The plans (build, mining, training) and the training's sequence budget
count with these; the model inputs themselves count from the image's patch grid (``qwen_vl.image_token_count``).
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_SIDE = 28  # Qwen2-VL / Qwen2.5-VL, and any model not recognised
SIDES = {"qwen3": 32, "pixtral": 16}  # a substring of the model's name or model_type -> pixels per token side


def token_side(model: str) -> int:
    """Pixels per image-token side of ``model``: a hub name or a local directory (its config.json's
    ``model_type`` when it has one, else the directory's name)."""
    name = model.lower()
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            name = str(json.loads(config.read_text()).get("model_type", "")).lower() or name
        except (ValueError, OSError):
            pass
    return next((side for key, side in SIDES.items() if key in name), DEFAULT_SIDE)


def tokens_at(max_pixels: int, side: int) -> int:
    """Image tokens of a page resized to at most ``max_pixels``, ``side`` x ``side`` pixels per token."""
    return max(1, max_pixels // (side * side))


def page_image_tokens(model: str, max_pixels: int) -> int:
    """Image tokens of a page at ``max_pixels`` for ``model`` (``token_side``)."""
    return tokens_at(max_pixels, token_side(model))
