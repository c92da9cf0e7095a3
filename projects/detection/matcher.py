"""DiffusionDet's dynamic-k (simOTA-like) matcher.

DiffusionDet (Chen et al., arXiv:2211.09788) assigns ground truths to predicted boxes one-to-many:
every ground truth takes its ``k`` cheapest predictions, where ``k`` is the truncated sum of its
top-5 IoUs with the predictions. Behaviour follows the official ``loss.py``
(github.com/ShoufaChen/DiffusionDet@1efb36d, ``HungarianMatcherDynamicK``); see the project
reference ``diffusiondet.md`` §3.5.

Notation (one image): ``N`` predictions (queries), ``G`` ground truths, ``K`` classes.

1. Prior: ``in_box[q, g]`` (prediction centre strictly inside gt box g) and
   ``in_center[q, g]`` (centre within ``center_radius`` gt widths/heights of the gt centre);
   ``fg[q] = any_g in_box | any_g in_center``.
2. Cost ``C = w_l1 * L1(norm xyxy) + w_cls * focal_cost + w_giou * (-GIoU)
   + 100 * ~(in_box & in_center)``, plus ``10000`` on rows with ``~fg``.
3. ``k_g = max(1, int(sum top-ota_k IoU[:, g]))``; gt g takes its ``k_g`` lowest-cost queries.
4. A query claimed by several gts keeps ``argmin_g C[q, g]``.
5. While some gt owns no query: rows of matched queries get ``+100000``, every unmatched gt
   claims its cheapest query, conflicts are resolved again.

Deliberate differences from the official code:

- Step 3 is one sort per image instead of a Python loop over ground truths (same selection up
  to the order of exact cost ties); step 5 handles all unmatched gts at once.
- The official step-5 conflict resolution reuses the *stale* ``anchor_matching_gt`` computed
  before the loop (reference §7.1 item 10), so a query newly claimed inside the loop can stay
  matched to two gts, and the final ``argmax`` silently gives it to the lower gt index - the
  other gt ends up without a positive after all. Here conflicts are recomputed from the current
  matching and the query goes to its cheapest *claimant*, so every gt owns at least one query
  whenever ``G <= N``.
- The official loop never ends when ``G > N``; here it stops when no query is left and the
  surplus gts stay unmatched (a debug message says so).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou

__all__ = ["HungarianMatcherDynamicK", "dynamic_k_matching", "batched_dynamic_k_matching"]

logger = logging.getLogger(__name__)

# Cost offsets of the official matcher: they order candidates (inside box and centre region,
# then inside either, then outside both) and, in the fix-up loop, push already-matched queries
# behind every free one.
_OUTSIDE_BOX_AND_CENTER_COST = 100.0
_OUTSIDE_PRIOR_COST = 10000.0
_ALREADY_MATCHED_COST = 100000.0


def _resolve_conflicts(matching: Tensor, cost: Tensor, *, claimants_only: bool) -> None:
    """Leave every query matched to at most one gt, in place.

    Args:
        matching: (N, G) bool, modified in place.
        cost: (N, G) float.
        claimants_only: choose among the gts that claimed the query (the fix-up loop) instead of
            among all gts (the official first resolution, step 4).
    """
    multi = matching.sum(1) > 1  # (N,)
    if not bool(multi.any()):
        return
    rows = cost[multi]  # (M, G)
    if claimants_only:
        rows = rows.masked_fill(~matching[multi], float("inf"))
    best_gt = rows.argmin(1)  # (M,)
    query_ids = multi.nonzero().squeeze(1)
    matching[query_ids] = False
    matching[query_ids, best_gt] = True


def dynamic_k_matching(cost: Tensor, ious: Tensor, *, ota_k: int = 5) -> tuple[Tensor, Tensor]:
    """Dynamic-k assignment of ground truths to queries (reference §3.5 step 5).

    Args:
        cost: (N, G) matching cost; modified in place (the fix-up loop adds offsets).
        ious: (N, G) IoU between predictions and ground truths.
        ota_k: number of top IoUs summed to get each gt's ``k``.

    Returns:
        ``(selected, gt_indices)``: (N,) bool mask of queries that got a gt, and (M,) int64 index
        of the gt of each selected query, in query order (M = ``selected.sum()``).
    """
    num_queries, num_gt = cost.shape
    # k_g = max(1, int(sum of the top-ota_k IoUs)); int() truncates like the official `.int()`.
    topk_ious = ious.topk(min(ota_k, num_queries), dim=0).values  # (ota_k, G)
    dynamic_ks = topk_ious.sum(0).int().clamp(min=1)  # (G,)
    # Rank of every query within each gt column; gt g takes the queries of rank < k_g.
    order = cost.argsort(dim=0, stable=True)  # (N, G)
    ranks = torch.empty_like(order)
    positions = torch.arange(num_queries, device=cost.device)[:, None].expand_as(order)
    ranks.scatter_(0, order, positions)
    matching = ranks < dynamic_ks[None, :]  # (N, G) bool

    _resolve_conflicts(matching, cost, claimants_only=False)

    while True:
        unmatched_gt = (~matching.any(0)).nonzero().squeeze(1)  # (U,)
        if unmatched_gt.numel() == 0:
            break
        matched_query = matching.any(1)  # (N,)
        if bool(matched_query.all()):
            logger.debug(
                "%d ground truths stay unmatched: only %d queries for %d ground truths",
                unmatched_gt.numel(),
                num_queries,
                num_gt,
            )
            break
        cost[matched_query] += _ALREADY_MATCHED_COST
        pos = cost[:, unmatched_gt].argmin(0)  # (U,)
        matching[pos, unmatched_gt] = True
        _resolve_conflicts(matching, cost, claimants_only=True)

    selected = matching.any(1)
    gt_indices = matching[selected].int().argmax(1)
    return selected, gt_indices


def _resolve_conflicts_batched(
    matching: Tensor, cost: Tensor, gt_valid: Tensor, *, claimants_only: bool
) -> Tensor:
    """:func:`_resolve_conflicts` for a batch: (P, N, G) matching/cost, (P, G) valid gts."""
    multi = matching.sum(-1) > 1  # (P, N)
    masked = cost.masked_fill(~gt_valid[:, None, :], float("inf"))
    if claimants_only:
        masked = masked.masked_fill(~matching, float("inf"))
    best = nn.functional.one_hot(masked.argmin(-1), cost.shape[-1]).bool()  # (P, N, G)
    return torch.where(multi[..., None], best, matching)


def batched_dynamic_k_matching(
    cost: Tensor, ious: Tensor, gt_valid: Tensor, *, ota_k: int = 5
) -> Tensor:
    """:func:`dynamic_k_matching` of P independent problems at once (same selections).

    Problem p has ``gt_valid[p].sum()`` ground truths in the first columns; padded columns never
    match. The fix-up loop runs until no problem has work left (one host sync per round), and a
    problem whose work is done is not changed by later rounds, so each result equals the
    one-problem function's.

    Args:
        cost: (P, N, G) matching cost; modified in place like :func:`dynamic_k_matching`.
        ious: (P, N, G).
        gt_valid: (P, G) bool.
        ota_k: top IoUs summed per gt.

    Returns:
        (P, N, G) bool: query n of problem p is matched to gt g (at most one g per query).
    """
    _, num_queries, _ = cost.shape
    topk_ious = ious.topk(min(ota_k, num_queries), dim=1).values  # (P, ota_k, G)
    dynamic_ks = topk_ious.sum(1).int().clamp(min=1)  # (P, G)
    order = cost.argsort(dim=1, stable=True)  # (P, N, G)
    ranks = torch.empty_like(order)
    positions = torch.arange(num_queries, device=cost.device)[None, :, None].expand_as(order)
    ranks.scatter_(1, order, positions)
    matching = (ranks < dynamic_ks[:, None, :]) & gt_valid[:, None, :]
    matching = _resolve_conflicts_batched(matching, cost, gt_valid, claimants_only=False)
    while True:
        unmatched_gt = ~matching.any(1) & gt_valid  # (P, G)
        matched_query = matching.any(2)  # (P, N)
        active = unmatched_gt.any(1) & ~matched_query.all(1)  # (P,)
        if not bool(active.any()):
            break
        push = (matched_query & active[:, None]).to(cost.dtype) * _ALREADY_MATCHED_COST
        cost += push[..., None]  # + 0 elsewhere: exact
        pos = cost.argmin(1)  # (P, G): each gt's cheapest query
        claim = unmatched_gt & active[:, None]
        claimed = torch.zeros_like(matching).scatter_(1, pos[:, None, :], claim[:, None, :])
        matching = _resolve_conflicts_batched(
            matching | claimed, cost, gt_valid, claimants_only=True
        )
    return matching


class HungarianMatcherDynamicK(nn.Module):
    """One-to-many dynamic-k matcher of DiffusionDet (reference §3.5).

    The name is the official one (it is not a Hungarian matcher). It has no parameters or
    buffers, so it adds no checkpoint keys.

    Args:
        cost_class: weight of the focal classification cost (official ``CLASS_WEIGHT`` 2.0).
        cost_bbox: weight of the L1 cost on normalised xyxy boxes (``L1_WEIGHT`` 5.0).
        cost_giou: weight of the negative-GIoU cost (``GIOU_WEIGHT`` 2.0).
        use_focal: sigmoid focal classification cost.
        use_fed_loss: federated loss training; the official matcher still uses the focal cost
            then (its fed-loss branch is unreachable), and so does this one.
        ota_k: number of top IoUs summed per gt for its dynamic ``k``.
        alpha: focal-cost alpha.
        gamma: focal-cost gamma.
        center_radius: radius of the centre prior, in gt widths/heights.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        use_focal: bool = True,
        use_fed_loss: bool = False,
        ota_k: int = 5,
        alpha: float = 0.25,
        gamma: float = 2.0,
        center_radius: float = 2.5,
    ) -> None:
        super().__init__()
        if not (use_focal or use_fed_loss):
            raise ValueError(
                "HungarianMatcherDynamicK supports only sigmoid classification "
                "(use_focal=True or use_fed_loss=True), as the official DiffusionDet"
            )
        if ota_k < 1:
            raise ValueError(f"ota_k must be >= 1, got {ota_k}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.use_focal = use_focal
        self.use_fed_loss = use_fed_loss
        self.ota_k = ota_k
        self.alpha = alpha
        self.gamma = gamma
        self.center_radius = center_radius

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, ota_k={self.ota_k}"
        )

    def prior(self, pred_boxes_xyxy: Tensor, gt_boxes_xyxy: Tensor) -> tuple[Tensor, Tensor]:
        """Centre prior of simOTA (official ``get_in_boxes_info``).

        Args:
            pred_boxes_xyxy: (N, 4) absolute xyxy predictions.
            gt_boxes_xyxy: (G, 4) absolute xyxy ground truths.

        Returns:
            ``(fg_mask, in_box_and_center)``: (N,) bool, a prediction's centre lies inside some
            gt box or centre region; (N, G) bool, inside gt g's box and its centre region.
        """
        pred_center = (pred_boxes_xyxy[:, :2] + pred_boxes_xyxy[:, 2:]) / 2  # (N, 2)
        gt_cxcywh = box_convert(gt_boxes_xyxy, "xyxy", "cxcywh")  # (G, 4)
        c = pred_center[:, None, :]  # (N, 1, 2)
        in_box = ((c > gt_boxes_xyxy[None, :, :2]) & (c < gt_boxes_xyxy[None, :, 2:])).all(-1)
        radius = self.center_radius * gt_cxcywh[None, :, 2:]  # (1, G, 2)
        in_center = ((c - gt_cxcywh[None, :, :2]).abs() < radius).all(-1)  # (N, G)
        fg_mask = in_box.any(1) | in_center.any(1)
        return fg_mask, in_box & in_center

    def class_cost(self, logits: Tensor, gt_labels: Tensor) -> Tensor:
        """Focal classification cost (N, G) of giving each query each gt's class.

        Args:
            logits: (N, K) class logits.
            gt_labels: (G,) int64 contiguous class ids.
        """
        prob = logits.sigmoid()  # (N, K)
        neg = (1 - self.alpha) * prob**self.gamma * (-(1 - prob + 1e-8).log())
        pos = self.alpha * (1 - prob) ** self.gamma * (-(prob + 1e-8).log())
        return pos[:, gt_labels] - neg[:, gt_labels]

    def _weighted_cost(
        self, cost_l1: Tensor, cost_cls: Tensor, cost_giou: Tensor, in_box_and_center: Tensor
    ) -> Tensor:
        """Step 2's sum of weighted costs, any (..., N, G) shape."""
        return (
            self.cost_bbox * cost_l1
            + self.cost_class * cost_cls
            + self.cost_giou * cost_giou
            + _OUTSIDE_BOX_AND_CENTER_COST * (~in_box_and_center).float()
        )

    @torch.no_grad()
    def match_batched(
        self,
        pred_logits: Tensor,
        pred_boxes: Tensor,
        *,
        gt_labels: Tensor,
        gt_boxes_xyxy: Tensor,
        gt_valid: Tensor,
        image_whwh: Tensor,
    ) -> Tensor:
        """Match P problems at once (e.g. every stage of every image); same result as forward.

        Args:
            pred_logits: (P, N, K).
            pred_boxes: (P, N, 4) absolute xyxy.
            gt_labels: (P, G) int64, padded.
            gt_boxes_xyxy: (P, G, 4) absolute xyxy, padded.
            gt_valid: (P, G) bool, False on padding.
            image_whwh: (P, 4) ``[w, h, w, h]`` of each problem's image.

        Returns:
            (P, N, G) bool matching (see :func:`batched_dynamic_k_matching`).
        """
        p, n, _ = pred_boxes.shape
        g = gt_boxes_xyxy.shape[1]
        if g == 0:
            return torch.zeros(p, n, 0, dtype=torch.bool, device=pred_boxes.device)
        pred_center = (pred_boxes[..., :2] + pred_boxes[..., 2:]) / 2  # (P, N, 2)
        gt_cxcywh = box_convert(gt_boxes_xyxy, "xyxy", "cxcywh")  # (P, G, 4)
        c = pred_center[:, :, None, :]  # (P, N, 1, 2)
        gt = gt_boxes_xyxy[:, None]  # (P, 1, G, 4)
        in_box = ((c > gt[..., :2]) & (c < gt[..., 2:])).all(-1)  # (P, N, G)
        radius = self.center_radius * gt_cxcywh[:, None, :, 2:]
        in_center = ((c - gt_cxcywh[:, None, :, :2]).abs() < radius).all(-1)
        valid = gt_valid[:, None, :]
        fg_mask = ((in_box | in_center) & valid).any(-1)  # (P, N)
        in_box_and_center = in_box & in_center
        ious = box_iou(pred_boxes, gt_boxes_xyxy).masked_fill(~valid, 0.0)  # (P, N, G)
        prob = pred_logits.sigmoid()
        neg = (1 - self.alpha) * prob**self.gamma * (-(1 - prob + 1e-8).log())
        pos = self.alpha * (1 - prob) ** self.gamma * (-(prob + 1e-8).log())
        labels = gt_labels[:, None, :].expand(p, n, g)
        cost_cls = pos.gather(2, labels) - neg.gather(2, labels)
        whwh = image_whwh[:, None, :]
        cost_l1 = torch.cdist(pred_boxes / whwh, gt_boxes_xyxy / whwh, p=1)
        cost_giou = -generalized_box_iou(pred_boxes, gt_boxes_xyxy)
        cost = self._weighted_cost(cost_l1, cost_cls, cost_giou, in_box_and_center)
        cost = cost + _OUTSIDE_PRIOR_COST * (~fg_mask).to(cost.dtype)[..., None]
        cost = cost.masked_fill(~valid, float("inf"))
        return batched_dynamic_k_matching(cost, ious, gt_valid, ota_k=self.ota_k)

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``pred_logits`` (B, N, K) and ``pred_boxes`` (B, N, 4) absolute xyxy in
                resized-image pixels.
            targets: per image, as the official ``prepare_targets`` (reference §2.2):
                ``labels`` (G,) int64, ``boxes_xyxy`` (G, 4) absolute xyxy,
                ``image_size_xyxy`` (4,) ``[w, h, w, h]``, ``image_size_xyxy_tgt`` (G, 4).

        Returns:
            Per image ``(selected, gt_indices)``: (N,) bool mask of positive queries and (M,) int64
            index into that image's targets for each positive, in query order. Images without
            ground truth give an all-False mask and an empty index.
        """
        pred_logits = outputs["pred_logits"]
        pred_boxes = outputs["pred_boxes"]
        indices = []
        for b, target in enumerate(targets):
            boxes = pred_boxes[b]  # (N, 4)
            num_queries = boxes.shape[0]
            gt_xyxy = target["boxes_xyxy"]  # (G, 4)
            if gt_xyxy.shape[0] == 0:
                indices.append(
                    (
                        torch.zeros(num_queries, dtype=torch.bool, device=boxes.device),
                        torch.zeros(0, dtype=torch.int64, device=boxes.device),
                    )
                )
                continue
            fg_mask, in_box_and_center = self.prior(boxes, gt_xyxy)
            ious = box_iou(boxes, gt_xyxy)  # (N, G)
            cost_cls = self.class_cost(pred_logits[b], target["labels"])
            image_whwh = target["image_size_xyxy"]  # (4,)
            gt_whwh = target["image_size_xyxy_tgt"]  # (G, 4)
            cost_l1 = torch.cdist(boxes / image_whwh, gt_xyxy / gt_whwh, p=1)
            cost_giou = -generalized_box_iou(boxes, gt_xyxy)
            cost = self._weighted_cost(cost_l1, cost_cls, cost_giou, in_box_and_center)
            cost[~fg_mask] += _OUTSIDE_PRIOR_COST
            indices.append(dynamic_k_matching(cost, ious, ota_k=self.ota_k))
        return indices
