"""The one Qwen2-VL-family input path (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), shared by the hf engine, the vlm training
backbone and the Reranker.

- ``image_processor`` / ``load_image_processor``: the PIL image processor with a checkpoint's settings and pixel
  bounds. transformers 5.x cannot build ``Qwen2VLProcessor`` without torchvision (its video processor lookup
  fails), so the image processor and the tokenizer are composed here instead.
- ``page_pixels``: ``(pixel_values, grid_thw)`` of one page image (encoded bytes or PIL).
- ``prompt_ids`` + ``expand_image_tokens``: prompt token ids from chat messages (the checkpoint's chat template,
  generation prompt on), each ``<|image_pad|>`` placeholder expanded to its image's token count
  (``grid_thw.prod() // merge_size**2``), as the Qwen processor does.
- ``batch_inputs``: left-padded model inputs of a batch (input_ids, attention_mask and, with images,
  mm_token_type_ids, pixel_values, image_grid_thw); left padding puts every row's last token at the last position.
- ``rope_positions`` / ``sequence_positions``: M-RoPE position ids through the model's own ``get_rope_index``.
The shared-prefix KV reuse built on these is ``docrerank.models.prefix``. torch, transformers and PIL are imported
inside the functions.
"""

from __future__ import annotations

import io
from typing import Any, Optional, Sequence

VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""``config.json`` model types this module handles."""


def image_processor(preprocessor_config: dict, min_pixels: int | None, max_pixels: int):
    """``Qwen2VLImageProcessorPil`` with a checkpoint's ``preprocessor_config.json`` values and the pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pre = preprocessor_config or {}
    size = pre.get("size") or {}
    low = min_pixels or pre.get("min_pixels") or size.get("shortest_edge") or 56 * 56
    kwargs = {k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
              if k in pre}
    return Qwen2VLImageProcessorPil(min_pixels=min(low, max_pixels), max_pixels=max_pixels, **kwargs)


def load_image_processor(model: str, min_pixels: int | None, max_pixels: int, local_files_only: bool = True):
    """``image_processor`` of the checkpoint ``model`` (a directory or hub id), from its ``preprocessor_config.json``."""
    from docrerank.models.hub import read_checkpoint_json

    pre = read_checkpoint_json(model, "preprocessor_config.json", local_files_only) or {}
    return image_processor(pre, min_pixels, max_pixels)


def to_rgb(image: Any, where: str = "image"):
    """An RGB ``PIL.Image`` from encoded bytes or a PIL image; ValueError naming ``where`` for None or bytes that
    do not decode."""
    from PIL import Image, UnidentifiedImageError

    if image is None:
        raise ValueError(f"{where}: no image (got None, expected encoded image bytes or a PIL image)")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{where}: could not decode {len(data)} bytes as an image ({err})") from None
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{where}: got {type(image).__name__}, expected encoded image bytes or a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")


def page_pixels(processor: Any, image: Any, where: str = "image") -> tuple[Any, Any]:
    """``(pixel_values, grid_thw)`` of one image (bytes or PIL): float32 patches ``(patches, dim)`` and ``(1, 3)``."""
    out = processor(images=[to_rgb(image, where)], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def image_token_count(grid_thw: Any, merge_size: int) -> int:
    """Language-model tokens of one image: its patch grid merged ``merge_size`` x ``merge_size``."""
    return int(grid_thw.prod()) // merge_size**2


def prompt_ids(tokenizer: Any, messages: Sequence[dict]) -> list[int]:
    """Token ids of chat-template messages (``[{"role", "content"}]``, images as ``{"type": "image"}`` parts) with
    the generation prompt, one placeholder token per image."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def expand_image_tokens(ids: Sequence[int], image_token_id: int, counts: Sequence[int]) -> list[int]:
    """``ids`` with the k-th image placeholder repeated ``counts[k]`` times; ValueError when the placeholders do not
    match the images one to one."""
    found = sum(1 for t in ids if t == image_token_id)
    if found != len(counts):
        raise ValueError(f"chat template produced {found} image placeholders for {len(counts)} image(s)")
    out, k = [], 0
    for t in ids:
        if t == image_token_id:
            out.extend([t] * counts[k])
            k += 1
        else:
            out.append(t)
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of token sequences, left-padded to the longest (int64 CPU tensors)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids, mask


def batch_inputs(seqs: Sequence[Sequence[int]], pad_id: int, image_token_id: Optional[int],
                 pixels: Sequence[tuple[Any, Any]] = (), dtype: Any = None) -> dict:
    """Left-padded CPU model inputs of a batch. ``pixels``: ``(pixel_values, grid_thw)`` of every image in the
    order the image tokens appear (row by row); with images the inputs also hold ``pixel_values`` (in ``dtype``
    when given), ``image_grid_thw`` and ``mm_token_type_ids``."""
    import torch

    ids, mask = left_pad(seqs, pad_id)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if pixels:
        pv = torch.cat([p for p, _ in pixels])
        inputs["pixel_values"] = pv if dtype is None else pv.to(dtype)
        inputs["image_grid_thw"] = torch.cat([g for _, g in pixels])
        inputs["mm_token_type_ids"] = (ids == image_token_id).int()
    return inputs


def rope_positions(model: Any, input_ids: Any, image_token_id: int, image_grid_thw: Any = None,
                   attention_mask: Any = None) -> Any:
    """M-RoPE position ids ``(3, B, L)`` of a (left-padded) batch from the model's ``get_rope_index``; without
    images, the text positions of the mask repeated on the three axes. ``model``: the ``...ForConditionalGeneration``
    (its ``.model`` has ``get_rope_index``)."""
    if attention_mask is None:
        import torch

        attention_mask = torch.ones_like(input_ids)
    if image_grid_thw is None:
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return pos.expand(3, *pos.shape)
    pos, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=(input_ids == image_token_id).int(),
                                        image_grid_thw=image_grid_thw, attention_mask=attention_mask)
    return pos


def sequence_positions(model: Any, ids: Sequence[int], image_token_id: int, grid_thw: Any = None) -> Any:
    """Position ids ``(3, L)`` of one unpadded sequence (``grid_thw``: its images' grids, or None)."""
    import torch

    return rope_positions(model, torch.tensor([list(ids)]), image_token_id, grid_thw)[:, 0, :]


ENCODER_OUTPUTS_SINCE = "5.18"  # transformers: the Qwen-VL models' forward takes mm_encoder_outputs


def require_encoder_outputs(model: Any) -> None:
    """RuntimeError unless ``model``'s forward (a Qwen-VL ``...VLModel``) takes ``mm_encoder_outputs`` by name: the
    pre-encoded page images the scorers pass. Older transformers swallow the argument in ``**kwargs``, so every page
    image would be ignored and every page would score the same."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    if "mm_encoder_outputs" in params:
        return
    import transformers

    raise RuntimeError(
        f"{type(model).__name__}.forward of transformers {transformers.__version__} does not take "
        f"mm_encoder_outputs: the page images would be ignored (every page scoring the same); install "
        f"transformers>={ENCODER_OUTPUTS_SINCE} (pip install 'transformers>={ENCODER_OUTPUTS_SINCE},<5.25')")
