"""Model FLOPs of a training step and the achieved fraction of a GPU's peak (MFU).

Counted from the model's shapes, not measured: a matrix product of (m x k) by (k x n) is 2mkn FLOPs.

- language model, per micro-batch: forward ``2 T N + 4 layers d_attn pairs`` (T tokens as laid out, N the weights
  of its linear layers, LoRA factors included, ``pairs`` the (query, key) pairs the attention mask allows, d_attn =
  heads x head_dim), backward ``2 T N + 2 T N_trainable + 8 layers d_attn pairs`` (gradients of the activations
  everywhere, of the weights only where they train); the gradient-checkpointing recomputation is not model work
  and is not counted;
- vision tower (frozen, no gradient): its forward once per page: ``2 patches N_blocks + 2 merged N_merger`` plus
  full attention over each page's patches (Qwen2.5-VL's windowed blocks over a window's patches).

``PEAK_BF16_TFLOPS`` holds the dense bf16 tensor peak of known devices; ``mfu`` divides achieved FLOP/s by it.
torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any, Optional

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name (first match).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM / HBM3
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
]


def peak_bf16_tflops(device_name: str) -> Optional[float]:
    """The dense bf16 peak (TFLOP/s) of a device by name, None when unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(flops: float, seconds: float, device_name: str, devices: int = 1) -> Optional[float]:
    """Achieved FLOP/s over ``devices`` devices' peak; None for an unknown device or no time."""
    peak = peak_bf16_tflops(device_name)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12 * devices)


def _numel(w: Any) -> int:
    shape = getattr(w, "ds_shape", None) or w.shape  # ZeRO-3 partitions weights: the full shape
    n = 1
    for d in shape:
        n *= int(d)
    return n


def vlm_shapes(model: Any) -> dict[str, float]:
    """What the FLOP count needs of a Qwen2-VL-family ``...ForConditionalGeneration`` (LoRA layers in place)."""
    import torch

    inner = model.model
    text, vision = model.config.text_config, model.config.vision_config
    lin = train = 0
    for m in inner.language_model.modules():
        if isinstance(m, torch.nn.Linear):
            n = _numel(m.weight)
            lin += n
            train += n if m.weight.requires_grad else 0
    blocks = merger = 0
    for name, m in inner.visual.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv3d)):
            if "merger" in name:
                merger += _numel(m.weight)
            else:
                blocks += _numel(m.weight)  # the patch embedding's kernel covers one patch: one use per patch
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    vis_dim = getattr(vision, "embed_dim", None) or vision.hidden_size
    window = 0
    if getattr(vision, "fullatt_block_indexes", None) and getattr(vision, "window_size", None):
        window = (vision.window_size // vision.patch_size) ** 2  # patches per window (Qwen2.5-VL)
    return {"lm_linear": lin, "lm_trainable": train, "lm_layers": text.num_hidden_layers,
            "lm_attn_dim": heads * head_dim, "vis_blocks": blocks, "vis_merger": merger, "vis_depth": vision.depth,
            "vis_dim": vis_dim, "vis_window": window,
            "vis_full_blocks": len(getattr(vision, "fullatt_block_indexes", None) or []) if window else vision.depth}


def attended_pairs(attention_mask: Any, segment_ids: Any = None) -> int:
    """(query, key) pairs a causal model attends over: per left-padded row of L real tokens L(L+1)/2; per packed
    row (``segment_ids``: 0 prefix, j suffix j, -1 padding) the prefix's P(P+1)/2 plus, per suffix of S tokens,
    S P + S(S+1)/2."""
    import torch

    if segment_ids is None:
        n = attention_mask.sum(1).long()
        return int((n * (n + 1) // 2).sum())
    total = 0
    for row in segment_ids:
        counts = torch.bincount(row[row >= 0])
        p = int(counts[0]) if len(counts) else 0
        s = counts[1:].long()
        total += p * (p + 1) // 2 + int((s * p + s * (s + 1) // 2).sum())
    return total


def vlm_step_flops(shapes: dict, inputs: dict, merge_size: int) -> dict[str, float]:
    """Model FLOPs of one training micro-batch of a vlm scorer's inputs: ``vision`` (forward, once per page),
    ``lm_forward``, ``lm`` (forward + backward) and ``total``."""
    grid = inputs["page_grid"].long()
    patches = grid.prod(-1)
    merged = patches // merge_size**2
    vis_pairs = patches * patches
    if shapes["vis_window"]:
        windowed = patches * patches.clamp(max=shapes["vis_window"])
        vis_pairs = (shapes["vis_full_blocks"] * vis_pairs + (shapes["vis_depth"] - shapes["vis_full_blocks"])
                     * windowed) / shapes["vis_depth"]
    vision = (2 * int(patches.sum()) * shapes["vis_blocks"] + 2 * int(merged.sum()) * shapes["vis_merger"]
              + 4 * shapes["vis_depth"] * shapes["vis_dim"] * float(vis_pairs.sum()))
    tokens = int(inputs["attention_mask"].sum())
    pairs = attended_pairs(inputs["attention_mask"], inputs.get("segment_ids"))
    attn = 4 * shapes["lm_layers"] * shapes["lm_attn_dim"] * pairs
    forward = 2 * tokens * shapes["lm_linear"] + attn
    backward = 2 * tokens * shapes["lm_linear"] + 2 * tokens * shapes["lm_trainable"] + 2 * attn
    return {"vision": float(vision), "lm_forward": float(forward), "lm": float(forward + backward),
            "total": float(vision + forward + backward)}
