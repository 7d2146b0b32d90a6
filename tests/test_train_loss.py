"""Training losses and metrics on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from docrerank.train.loss import (
    compute_loss,
    example_weights,
    listwise_loss,
    padded_groups,
    pairwise_counts,
    pointwise_loss,
)


def two_way_ce(l_true, l_false, labels):
    """The paper's loss: cross-entropy of a softmax over the (True, False) logits; target True for positives."""
    logits = torch.stack([torch.tensor(l_true), torch.tensor(l_false)], dim=1)
    target = torch.tensor([0 if y else 1 for y in labels])
    return F.cross_entropy(logits, target, reduction="none")


def test_pointwise_equals_two_way_cross_entropy_on_the_logit_difference():
    l_true, l_false = [2.0, -1.0, 0.5, 3.0], [0.0, 1.0, 0.5, -2.0]
    labels = [1, 0, 0, 0]
    scores = torch.tensor(l_true) - torch.tensor(l_false)
    ce = two_way_ce(l_true, l_false, labels)
    w = torch.tensor([3.0, 1.0, 1.0, 1.0])
    got = pointwise_loss(scores, torch.tensor(labels), w)
    assert got.item() == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-6)
    assert pointwise_loss(scores, torch.tensor(labels)).item() == pytest.approx(float(ce.mean()), rel=1e-6)


def test_pointwise_has_no_saturated_ties_for_large_scores():
    # softplus on the float32 difference: a confident wrong answer still has a finite, exact loss and gradient.
    scores = torch.tensor([-60.0, 60.0], requires_grad=True)
    loss = pointwise_loss(scores, torch.tensor([1, 0]))
    loss.backward()
    assert loss.item() == pytest.approx(60.0, rel=1e-4)
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().min() > 0.4


def test_example_weights_three_to_one():
    labels = torch.tensor([1, 0, 0, 0, 1, 0])
    assert example_weights(labels, 3.0).tolist() == [3.0, 1.0, 1.0, 1.0, 3.0, 1.0]
    assert example_weights(labels, 1.0).tolist() == [1.0] * 6


def test_positive_weight_balances_one_positive_against_three_negatives():
    # With every example equally wrong, a 3:1 weighting puts half of the loss on the positive.
    scores = torch.tensor([-1.0, 1.0, 1.0, 1.0])
    labels = torch.tensor([1, 0, 0, 0])
    w = example_weights(labels, 3.0)
    per = F.softplus(torch.tensor(1.0))
    assert pointwise_loss(scores, labels, w).item() == pytest.approx(per.item(), rel=1e-6)
    assert (w[labels == 1].sum() / w.sum()).item() == pytest.approx(0.5)


def test_listwise_is_softmax_cross_entropy_per_group_with_ragged_groups():
    scores = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, 1.5, 0.0])
    labels = torch.tensor([1, 0, 0, 0, 0, 1, 0])
    gidx = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    want = (F.cross_entropy(scores[:4][None], torch.tensor([0]))
            + F.cross_entropy(scores[4:][None], torch.tensor([1]))) / 2
    assert listwise_loss(scores, labels, gidx).item() == pytest.approx(want.item(), rel=1e-6)
    # order inside the batch does not matter
    perm = torch.tensor([6, 0, 5, 1, 4, 2, 3])
    assert listwise_loss(scores[perm], labels[perm], gidx[perm]).item() == pytest.approx(want.item(), rel=1e-6)


def test_listwise_needs_exactly_one_positive_per_group():
    with pytest.raises(ValueError, match="exactly 1 positive"):
        listwise_loss(torch.zeros(4), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 0, 0]))


def test_compute_loss_dispatch_and_shape_errors():
    s, y, g = torch.tensor([1.0, -1.0]), torch.tensor([1, 0]), torch.tensor([0, 0])
    assert compute_loss("pointwise", s, y, g).item() == pytest.approx(F.softplus(torch.tensor(-1.0)).item())
    assert compute_loss("listwise", s, y, g).item() == pytest.approx(F.cross_entropy(s[None], torch.tensor([0])).item())
    with pytest.raises(ValueError, match="expected 'pointwise' or 'listwise'"):
        compute_loss("pairwise", s, y, g)
    with pytest.raises(ValueError, match="shape"):
        pointwise_loss(s, torch.tensor([1, 0, 0]))


def test_padded_groups():
    vals, mask = padded_groups(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([1, 0, 1, 0, 1]), math.nan)
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert vals[0, :2].tolist() == [2.0, 4.0] and vals[1].tolist() == [1.0, 3.0, 5.0]


def test_pairwise_counts_count_pairs_within_groups_only():
    scores = torch.tensor([0.9, 0.1, 0.95, 0.9, 0.2, 0.5, 0.5])
    labels = torch.tensor([1, 0, 0, 0, 1, 0, 0])
    gidx = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    # group 0: 0.9 > 0.1 yes, > 0.95 no, = 0.9 tie (half); group 1: 0.2 < 0.5 twice. The 0.95 of group 0 is never
    # compared with group 1's positive.
    assert pairwise_counts(scores, labels, gidx) == (1.5, 5)
    assert pairwise_counts(scores[:1], labels[:1], gidx[:1]) == (0.0, 0)  # no (positive, negative) pair
