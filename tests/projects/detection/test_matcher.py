"""Invariants of the dynamic-k matcher (DiffusionDet's ``diffusiondet/loss.py``)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from projects.detection.matcher import HungarianMatcherDynamicK, dynamic_k_matching


def make_target(gt_xyxy: torch.Tensor, labels: torch.Tensor, w: int = 200, h: int = 160) -> dict:
    whwh = torch.tensor([w, h, w, h], dtype=torch.float32)
    return {
        "labels": labels,
        "boxes": box_convert(gt_xyxy / whwh, "xyxy", "cxcywh"),
        "boxes_xyxy": gt_xyxy,
        "image_size_xyxy": whwh,
        "image_size_xyxy_tgt": whwh.repeat(len(gt_xyxy), 1),
    }


def random_boxes(n: int, generator: torch.Generator, size: float = 160.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = torch.rand(n, 2, generator=generator) * 50 + 4
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("num_gt,num_queries", [(1, 10), (7, 50), (30, 40), (12, 12)])
def test_every_gt_matched_and_each_query_once(num_gt, num_queries):
    g = torch.Generator().manual_seed(num_gt)
    gt = random_boxes(num_gt, g)
    target = make_target(gt, torch.randint(0, 3, (num_gt,), generator=g))
    outputs = {
        "pred_logits": torch.randn(1, num_queries, 3, generator=g),
        "pred_boxes": random_boxes(num_queries, g)[None],
    }
    ((selected, gt_indices),) = HungarianMatcherDynamicK()(outputs, [target])
    assert selected.shape == (num_queries,) and selected.dtype == torch.bool
    assert len(gt_indices) == int(selected.sum())  # one gt per selected query
    assert set(gt_indices.tolist()) == set(range(num_gt))  # every gt has a query


def test_dynamic_k_is_truncated_top5_iou_sum():
    # Costs favour queries in index order for every gt, no conflicts (gts far apart), so gt g
    # gets exactly k_g = max(1, int(sum of its top-5 IoUs)) queries.
    num_queries, num_gt = 40, 3
    ious = torch.zeros(num_queries, num_gt)
    ious[:5, 0] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])  # sum 3.5 -> k 3
    ious[10:15, 1] = 0.1  # sum 0.5 -> k clamps to 1
    ious[20:26, 2] = torch.tensor([0.95, 0.9, 0.9, 0.9, 0.9, 0.99])  # top-5 sum 4.59 -> 4
    cost = torch.full((num_queries, num_gt), 1000.0)
    cost[:10, 0] = torch.arange(10.0)
    cost[10:20, 1] = torch.arange(10.0)
    cost[20:30, 2] = torch.arange(10.0)
    selected, gt_indices = dynamic_k_matching(cost, ious, ota_k=5)
    assert selected.nonzero().squeeze(1).tolist() == [0, 1, 2, 10, 20, 21, 22, 23]
    assert gt_indices.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]


def test_conflicting_query_goes_to_cheapest_gt():
    ious = torch.tensor([[0.9, 0.9], [0.05, 0.05], [0.05, 0.05]])  # k = 1 for both gts
    cost = torch.tensor([[1.0, 0.5], [5.0, 9.0], [9.0, 5.0]])  # both gts want query 0
    selected, gt_indices = dynamic_k_matching(cost.clone(), ious, ota_k=3)
    # query 0 -> gt 1 (cheaper); gt 0 then takes its cheapest free query 1
    assert selected.tolist() == [True, True, False]
    assert gt_indices.tolist() == [1, 0]


def test_fixup_conflict_between_unmatched_gts_is_resolved():
    # Three gts all prefer query 0; the official loop (stale anchor_matching_gt) would leave a
    # query double-assigned. Every gt must end with its own query.
    cost = torch.tensor([[0.0, 0.1, 0.2], [1.0, 1.0, 1.0], [2.0, 2.0, 1.5], [3.0, 3.0, 3.0]])
    ious = torch.full((4, 3), 0.1)
    selected, gt_indices = dynamic_k_matching(cost.clone(), ious, ota_k=2)
    assert sorted(gt_indices.tolist()) == [0, 1, 2]
    assert int(selected.sum()) == 3


@pytest.mark.parametrize("seed", range(5))
def test_more_gts_than_queries_terminates(seed):
    # the official loop never ends here; every query ends up with exactly one gt
    g = torch.Generator().manual_seed(seed)
    cost, ious = torch.rand(3, 5, generator=g), torch.rand(3, 5, generator=g)
    selected, gt_indices = dynamic_k_matching(cost, ious, ota_k=5)
    assert bool(selected.all()) and len(gt_indices) == 3


def test_image_without_gt_has_no_positive():
    target = make_target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    outputs = {
        "pred_logits": torch.randn(1, 8, 3),
        "pred_boxes": random_boxes(8, torch.Generator())[None],
    }
    ((selected, gt_indices),) = HungarianMatcherDynamicK()(outputs, [target])
    assert not bool(selected.any()) and gt_indices.numel() == 0


def test_perfect_prediction_is_matched_to_its_gt():
    g = torch.Generator().manual_seed(3)
    gt = torch.tensor([[10.0, 10.0, 60.0, 50.0], [100.0, 80.0, 150.0, 140.0]])
    preds = torch.cat([random_boxes(20, g), gt.flip(0)])  # queries 20, 21 = gt 1, gt 0
    logits = torch.full((1, 22, 2), -5.0)
    logits[0, 20, 1] = logits[0, 21, 0] = 5.0
    target = make_target(gt, torch.tensor([0, 1]))
    ((selected, gt_indices),) = HungarianMatcherDynamicK()(
        {"pred_logits": logits, "pred_boxes": preds[None]}, [target]
    )
    pairs = dict(zip(selected.nonzero().squeeze(1).tolist(), gt_indices.tolist()))
    assert pairs[20] == 1 and pairs[21] == 0
    # every selected query overlaps its gt (the prior keeps far-away boxes out)
    sel = selected.nonzero().squeeze(1)
    assert (box_iou(preds[sel], gt)[torch.arange(len(sel)), gt_indices] > 0).all()


def test_prior_centre_region():
    m = HungarianMatcherDynamicK()
    gt = torch.tensor([[40.0, 40.0, 60.0, 60.0]])  # centre 50, w=h=20 -> centre region |d| < 50
    preds = torch.tensor(
        [[45.0, 45.0, 55.0, 55.0], [80.0, 45.0, 90.0, 55.0], [140.0, 45.0, 150.0, 55.0]]
    )  # centres 50 (in box), 85 (in centre region only), 145 (outside)
    fg, in_both = m.prior(preds, gt)
    assert fg.tolist() == [True, True, False]
    assert in_both.squeeze(1).tolist() == [True, False, False]


def test_rejects_softmax_mode():
    with pytest.raises(ValueError, match="use_focal"):
        HungarianMatcherDynamicK(use_focal=False, use_fed_loss=False)


def loop_reference(cost: torch.Tensor, ious: torch.Tensor, ota_k: int):
    """Per-gt loops as in the official code, with the fix-up conflict step using the current
    matching (the documented fix); used to check the vectorised implementation."""
    cost = cost.clone()
    n, g = cost.shape
    matching = torch.zeros(n, g)
    topk = ious.topk(min(ota_k, n), dim=0).values
    ks = torch.clamp(topk.sum(0).int(), min=1)
    for j in range(g):
        pos = cost[:, j].topk(int(ks[j]), largest=False).indices
        matching[pos, j] = 1
    multi = matching.sum(1) > 1
    if multi.any():
        best = cost[multi].argmin(1)
        matching[multi] = 0
        matching[multi.nonzero().squeeze(1), best] = 1
    while (matching.sum(0) == 0).any() and not (matching.sum(1) > 0).all():
        cost[matching.sum(1) > 0] += 100000.0
        for j in (matching.sum(0) == 0).nonzero().squeeze(1).tolist():
            matching[cost[:, j].argmin(), j] = 1
        for q in (matching.sum(1) > 1).nonzero().squeeze(1).tolist():
            claimed = matching[q] > 0
            row = torch.where(claimed, cost[q], torch.tensor(float("inf")))
            matching[q] = 0
            matching[q, row.argmin()] = 1
    selected = matching.sum(1) > 0
    return selected, matching[selected].argmax(1)


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_matching_equals_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 60, (1,), generator=g))
    num_gt = int(torch.randint(1, 15, (1,), generator=g))
    # distinct costs (no ties) with a few outside-prior offsets, like the real cost matrix
    cost = torch.rand(n, num_gt, generator=g) + 10000.0 * (torch.rand(n, 1, generator=g) > 0.7)
    ious = torch.rand(n, num_gt, generator=g) ** 3
    expected = loop_reference(cost, ious, 5)
    selected, gt_indices = dynamic_k_matching(cost.clone(), ious, ota_k=5)
    assert torch.equal(selected, expected[0]) and torch.equal(gt_indices, expected[1])
