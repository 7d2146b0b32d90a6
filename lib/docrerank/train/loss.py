"""Losses and metrics on relevance scores: pure functions on tensors.

A score is s = logit("True") - logit("False") in float32. The paper's 2-way softmax over (True, False) puts
p(True) = sigmoid(s) on the positive answer, so its cross-entropy is softplus(-s) for a positive and
softplus(s) for a negative: the pointwise loss below, computed from s directly (no saturated ties in bf16).
A batch is flat: examples of whole groups, with ``group_index`` (0..G-1) telling which group each belongs to.
torch is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from docrerank.models.windows import padded_groups

if TYPE_CHECKING:
    import torch


def _check_flat(scores: torch.Tensor, **others: torch.Tensor) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores: expected a 1-D tensor, got shape {tuple(scores.shape)}")
    for name, t in others.items():
        if t.shape != scores.shape:
            raise ValueError(f"{name}: expected shape {tuple(scores.shape)} like scores, got {tuple(t.shape)}")


def example_weights(labels: torch.Tensor, positive_weight: float = 3.0) -> torch.Tensor:
    """Per-example loss weights: ``positive_weight`` for positives and 1 otherwise (3 = the paper's 3:1, one
    positive weighing as much as its three negatives)."""
    import torch

    return torch.where(labels > 0, torch.full_like(labels, positive_weight, dtype=torch.float32),
                       torch.ones_like(labels, dtype=torch.float32))


def pointwise_loss(scores: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted mean of the 2-way cross-entropy: sum(w * CE) / sum(w)."""
    import torch
    import torch.nn.functional as F

    weights = torch.ones_like(scores) if weights is None else weights
    _check_flat(scores, labels=labels, weights=weights)
    s = scores.float()
    ce = torch.where(labels > 0, F.softplus(-s), F.softplus(s))
    w = weights.float().to(s.device)
    total = w.sum()
    if total <= 0:
        raise ValueError("weights: expected a positive sum, got 0")
    return (w * ce).sum() / total


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Mean over groups of the cross-entropy of a softmax over the group's scores, target = its one positive."""
    import torch
    import torch.nn.functional as F

    _check_flat(scores, labels=labels, group_index=group_index)
    s, mask = padded_groups(scores.float(), group_index, float("-inf"))
    lab, _ = padded_groups(labels.long(), group_index, 0)
    n_pos = lab.sum(1)
    if (n_pos != 1).any():
        bad = int(torch.nonzero(n_pos != 1)[0])
        raise ValueError(f"listwise loss: expected exactly 1 positive per group, group {bad} has {int(n_pos[bad])}")
    target = lab.argmax(1)
    return F.cross_entropy(s.masked_fill(~mask, float("-inf")), target)


def compute_loss(kind: str, scores: torch.Tensor, labels: torch.Tensor, group_index: torch.Tensor,
                 weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``pointwise`` (weighted 2-way CE) or ``listwise`` (softmax per group)."""
    if kind == "pointwise":
        return pointwise_loss(scores, labels, weights)
    if kind == "listwise":
        return listwise_loss(scores, labels, group_index)
    raise ValueError(f"loss kind: got {kind!r}, expected 'pointwise' or 'listwise'")


def pairwise_counts(scores: torch.Tensor, labels: torch.Tensor, group_index: torch.Tensor) -> tuple[float, int]:
    """(correct, pairs) over every (positive, negative) pair of the same group; a tie counts one half."""
    _check_flat(scores, labels=labels, group_index=group_index)
    s = scores.detach().float()
    same = group_index[:, None] == group_index[None, :]
    pairs = same & (labels[:, None] > 0) & (labels[None, :] <= 0)
    diff = s[:, None] - s[None, :]
    correct = ((diff > 0).float() + 0.5 * (diff == 0).float())[pairs].sum()
    return float(correct), int(pairs.sum())

