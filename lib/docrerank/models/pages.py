"""Pages and model directories for the Reranker: what a page to score may be, and where a reranker's model is.

- ``Page`` / ``as_page``: a page from image bytes, a PIL image, a page row (dict) or a text string, with the key
  pairs that share a page are grouped by.
- ``pixel_count``: a page image's area from its header (the Reranker orders pairs by it).
- ``find_model_dir`` / ``read_card``: the model directory of a training output or a checkpoint, and its backbone
  (``reranker.json`` written by the training job, else guessed from ``config.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docrerank.models.qwen_vl import VL_MODEL_TYPES


@dataclass
class Page:
    """One page to score: its key (pairs with the same key share one page encoding), image and text."""

    key: str
    image: Any = None  # encoded bytes or a PIL image
    text: str = ""


def as_page(page: Any, index: int = 0) -> Page:
    """A ``Page`` from bytes, a PIL image, a page row (dict) or a text string."""
    if isinstance(page, Page):
        return page
    if isinstance(page, (bytes, bytearray, memoryview)):
        data = bytes(page)
        return Page("sha1:" + hashlib.sha1(data).hexdigest(), image=data)
    if isinstance(page, str):
        return Page("text:" + hashlib.sha1(page.encode()).hexdigest(), text=page)
    if isinstance(page, dict):
        image = page.get("image")
        if isinstance(image, dict):  # Hugging Face datasets' image struct
            image = image.get("bytes")
        text = page.get("text") or ""
        key = page.get("page_id") or page.get("corpus_id") or page.get("corpus-id")
        if key is None:
            digest = hashlib.sha1(bytes(image) if isinstance(image, (bytes, bytearray)) else text.encode()).hexdigest()
            key = "sha1:" + digest
        return Page(str(key), image=image, text=text)
    try:
        from PIL import Image

        if isinstance(page, Image.Image):
            return Page(f"pil:{id(page)}", image=page)
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    raise TypeError(f"page {index}: expected image bytes, a PIL image, a page row (dict) or text, "
                    f"got {type(page).__name__}")


def find_model_dir(path: str) -> Path:
    """The model directory of ``path``: a training output (``<output>/model/merged``), its ``model`` directory,
    a merged model, or any checkpoint directory; ``pkg:`` and hub ids resolve as in training."""
    from docrerank.models.hub import resolve_model_path

    p = Path(path)
    for cand in (p / "model" / "merged", p / "merged", p):
        if (cand / "config.json").is_file():
            return cand
    if p.exists():
        raise ValueError(f"reranker path {path!r}: no config.json in it, its merged/ or model/merged/")
    try:
        return Path(resolve_model_path(path))
    except ValueError:
        raise ValueError(f"reranker path {path!r}: not a directory (a training output or a model) and not a "
                         "checkpoint in the local Hugging Face cache; train one with jobs.train_reranker or "
                         "give a local path") from None


def read_card(model_dir: Path) -> dict:
    """``reranker.json`` when the training job wrote one; else the backbone guessed from ``config.json``."""
    card_file = model_dir / "reranker.json"
    if card_file.is_file():
        return {**json.loads(card_file.read_text()), "trained": True}
    config = json.loads((model_dir / "config.json").read_text())
    backbone = "vlm" if config.get("model_type") in VL_MODEL_TYPES else "text"
    return {"backbone": backbone, "trained": False}


def pixel_count(page: Page) -> int:
    """Width x height of the page image, read from its header only (0 when there is no image)."""
    if page.image is None:
        return 0
    from PIL import Image

    try:
        img = page.image if isinstance(page.image, Image.Image) else Image.open(io.BytesIO(page.image))
    except Exception:  # noqa: BLE001 - an unreadable image is reported when it is scored
        return 0
    return img.size[0] * img.size[1]
