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


def _resolve_conflicts_batched(
    matching: Tensor, cost: Tensor, gt_valid: Tensor, *, claimants_only: bool
) -> Tensor:
    """Leave every query matched to at most one gt.

    Args:
        matching: (P, N, G) bool.
        cost: (P, N, G) float.
        gt_valid: (P, G) bool, False on padding.
        claimants_only: choose among the gts that claimed the query (the fix-up loop, step 5)
            instead of among all gts (the official first resolution, step 4).

    Returns:
        (P, N, G) bool, the new matching.
    """
    multi = matching.sum(-1) > 1  # (P, N)
    masked = cost.masked_fill(~gt_valid[:, None, :], float("inf"))
    if claimants_only:
        masked = masked.masked_fill(~matching, float("inf"))
    best = nn.functional.one_hot(masked.argmin(-1), cost.shape[-1]).bool()  # (P, N, G)
    return torch.where(multi[..., None], best, matching)


def batched_dynamic_k_matching(
    cost: Tensor, ious: Tensor, gt_valid: Tensor, *, ota_k: int = 5
) -> Tensor:
    """Dynamic-k assignment (steps 3-5 above) of P independent problems at once.

    Problem p has ``gt_valid[p].sum()`` ground truths in the first columns; padded columns never
    match. The fix-up loop runs until no problem has work left (one host sync per round), and a
    problem whose work is done is not changed by later rounds, so each result is that of the
    problem matched alone.

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
            if logger.isEnabledFor(logging.DEBUG) and bool(unmatched_gt.any()):
                logger.debug(
                    "%d ground truths stay unmatched: more ground truths than the %d queries",
                    int(unmatched_gt.sum()),
                    num_queries,
                )
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


def dynamic_k_matching(cost: Tensor, ious: Tensor, *, ota_k: int = 5) -> tuple[Tensor, Tensor]:
    """Dynamic-k assignment of one image's ground truths to its queries (steps 3-5 above).

    Args:
        cost: (N, G) matching cost; modified in place (the fix-up loop adds offsets).
        ious: (N, G) IoU between predictions and ground truths.
        ota_k: number of top IoUs summed to get each gt's ``k``.

    Returns:
        ``(selected, gt_indices)``: (N,) bool mask of queries that got a gt, and (M,) int64 index
        of the gt of each selected query, in query order (M = ``selected.sum()``).
    """
    gt_valid = torch.ones(1, cost.shape[1], dtype=torch.bool, device=cost.device)
    matching = batched_dynamic_k_matching(cost[None], ious[None], gt_valid, ota_k=ota_k)[0]
    selected = matching.any(1)
    return selected, matching[selected].int().argmax(1)


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

    def prior(
        self, pred_boxes_xyxy: Tensor, gt_boxes_xyxy: Tensor, gt_valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Centre prior of simOTA (official ``get_in_boxes_info``), any leading batch shape.

        Args:
            pred_boxes_xyxy: (..., N, 4) absolute xyxy predictions.
            gt_boxes_xyxy: (..., G, 4) absolute xyxy ground truths.
            gt_valid: (..., G) bool, False on padded ground truths (None: all valid).

        Returns:
            ``(fg_mask, in_box_and_center)``: (..., N) bool, a prediction's centre lies inside
            some valid gt box or centre region; (..., N, G) bool, inside gt g's box and its
            centre region.
        """
        c = ((pred_boxes_xyxy[..., :2] + pred_boxes_xyxy[..., 2:]) / 2)[..., :, None, :]
        gt = gt_boxes_xyxy[..., None, :, :]  # (..., 1, G, 4)
        in_box = ((c > gt[..., :2]) & (c < gt[..., 2:])).all(-1)  # (..., N, G)
        gt_cxcywh = box_convert(gt, "xyxy", "cxcywh")
        radius = self.center_radius * gt_cxcywh[..., 2:]
        in_center = ((c - gt_cxcywh[..., :2]).abs() < radius).all(-1)
        in_either = in_box | in_center
        if gt_valid is not None:
            in_either = in_either & gt_valid[..., None, :]
        return in_either.any(-1), in_box & in_center

    def class_cost(self, logits: Tensor, gt_labels: Tensor) -> Tensor:
        """Focal classification cost of giving each query each gt's class.

        Args:
            logits: (P, N, K) class logits.
            gt_labels: (P, G) int64 contiguous class ids.

        Returns:
            (P, N, G).
        """
        prob = logits.sigmoid()
        neg = (1 - self.alpha) * prob**self.gamma * (-(1 - prob + 1e-8).log())
        pos = self.alpha * (1 - prob) ** self.gamma * (-(prob + 1e-8).log())
        labels = gt_labels[:, None, :].expand(-1, logits.shape[1], -1)
        return pos.gather(2, labels) - neg.gather(2, labels)

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
        """Match P independent problems at once (e.g. every stage of every image).

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
        fg_mask, in_box_and_center = self.prior(pred_boxes, gt_boxes_xyxy, gt_valid)
        valid = gt_valid[:, None, :]
        ious = box_iou(pred_boxes, gt_boxes_xyxy).masked_fill(~valid, 0.0)  # (P, N, G)
        cost_cls = self.class_cost(pred_logits, gt_labels)
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
        pred_boxes = outputs["pred_boxes"]
        batch, num_queries = pred_boxes.shape[:2]
        max_gt = max((len(t["labels"]) for t in targets), default=0)
        gt_labels = torch.zeros(batch, max_gt, dtype=torch.int64, device=pred_boxes.device)
        gt_xyxy = pred_boxes.new_zeros(batch, max_gt, 4)
        gt_valid = torch.zeros(batch, max_gt, dtype=torch.bool, device=pred_boxes.device)
        for b, t in enumerate(targets):
            g = len(t["labels"])
            gt_labels[b, :g], gt_xyxy[b, :g], gt_valid[b, :g] = t["labels"], t["boxes_xyxy"], True
        matching = self.match_batched(
            outputs["pred_logits"],
            pred_boxes,
            gt_labels=gt_labels,
            gt_boxes_xyxy=gt_xyxy,
            gt_valid=gt_valid,
            image_whwh=torch.stack([t["image_size_xyxy"] for t in targets]).to(pred_boxes),
        )  # (B, N, G)
        selected = matching.any(-1)  # (B, N)
        if max_gt == 0:
            return [(s, torch.zeros(0, dtype=torch.int64, device=s.device)) for s in selected]
        return [(s, m[s].int().argmax(-1)) for s, m in zip(selected, matching, strict=True)]
