"""DiffusionInst's mask loss on two gloo processes against one process on the same global batch:
the Dice normaliser is the matched count over all processes, and a stage whose boxes diverged
on one process only is skipped on every process (its normaliser is a collective)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from projects.detection.diffusioninst.criterion import SetCriterionWithMasks
from projects.detection.diffusioninst.head import NUM_DYNAMIC_PARAMS

W = H = 64
N, K, FEAT = 6, 2, 16  # boxes per image, classes, mask-feature side


def _image(i: int, *, diverged_last: bool = False) -> tuple[dict, dict]:
    """One image's two-stage outputs (unbatched) and target; image ``i`` has ``i + 1``
    ground truths with distinct masks, so the processes' matched counts differ."""
    g = torch.Generator().manual_seed(i)
    gt = torch.tensor([[4.0, 4, 30, 30], [30, 20, 60, 50], [10, 36, 28, 62]])[: i + 1]
    whwh = torch.tensor([W, H, W, H], dtype=torch.float32)
    cxcywh = torch.cat([(gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]], 1) / whwh
    masks = torch.zeros(len(gt), FEAT, FEAT)
    for j, box in enumerate((gt / 4).long()):
        masks[j, box[1] : box[3], box[0] : box[2]] = 1
    target = {
        "labels": torch.arange(len(gt)) % K,
        "boxes": cxcywh,
        "boxes_xyxy": gt,
        "image_size_xyxy": whwh,
        "image_size_xyxy_tgt": whwh.repeat(len(gt), 1),
        "masks": masks,
        "mask_valid": torch.ones(len(gt), dtype=torch.bool),
    }
    stages = []
    for s in range(2):
        boxes = gt[torch.arange(N) % len(gt)] + torch.randn(N, 4, generator=g)
        if diverged_last and s == 1:
            boxes[0, 2] = float("nan")
        stages.append(
            {
                "pred_logits": torch.randn(N, K, generator=g),
                "pred_boxes": boxes,
                "pred_mask_params": torch.randn(N, NUM_DYNAMIC_PARAMS, generator=g) * 0.3,
            }
        )
    return {"stages": stages, "mask_feat": torch.randn(8, FEAT, FEAT, generator=g)}, target


def _batch(images: list[tuple[dict, dict]]) -> tuple[dict, list[dict]]:
    def stage(s: int) -> dict:
        keys = ("pred_logits", "pred_boxes", "pred_mask_params")
        return {k: torch.stack([o["stages"][s][k] for o, _ in images]) for k in keys}

    outputs = {**stage(1), "aux_outputs": [stage(0)]}
    outputs["mask_feat"] = torch.stack([o["mask_feat"] for o, _ in images])
    return outputs, [t for _, t in images]


def _mask_losses(images: list[tuple[dict, dict]]) -> dict[str, float]:
    crit = SetCriterionWithMasks(num_classes=K)
    losses = crit(*_batch(images))
    return {k: float(v) for k, v in losses.items() if k.startswith("loss_masks")}


def _rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=30),
    )
    try:
        # rank r holds images 2r and 2r + 1 of the global batch; in the second case the last
        # stage's boxes hold a NaN on rank 1 only
        mine = (2 * rank, 2 * rank + 1)
        losses = [_mask_losses([_image(i, diverged_last=d and rank == 1) for i in mine])
                  for d in (False, True)]  # fmt: skip
        torch.save(losses, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[list[dict[str, float]]]:
    """[finite, diverged on rank 1] mask losses of each of two gloo ranks."""
    out = tmp_path_factory.mktemp("two_processes")
    mp.spawn(_rank, args=(str(out / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_mask_loss_of_two_processes_averages_to_the_one_process_loss(two_processes):
    # DDP averages the ranks' gradients, so the mean of the ranks' losses must be the
    # 1-process loss of the whole batch (the ranks hold 3 and 7 ground truths)
    one = _mask_losses([_image(i) for i in range(4)])
    ranks = [r[0] for r in two_processes]
    for key in ("loss_masks", "loss_masks_0"):
        mean = (ranks[0][key] + ranks[1][key]) / 2
        assert abs(mean - one[key]) <= 1e-5 * abs(one[key]), key
        assert ranks[0][key] != ranks[1][key]


def test_stage_diverged_on_one_process_is_skipped_on_both(two_processes):
    one = _mask_losses([_image(i, diverged_last=i >= 2) for i in range(4)])
    ranks = [r[1] for r in two_processes]
    for losses in (one, *ranks):
        assert losses["loss_masks"] != losses["loss_masks"]  # NaN on every process
    mean = (ranks[0]["loss_masks_0"] + ranks[1]["loss_masks_0"]) / 2
    assert abs(mean - one["loss_masks_0"]) <= 1e-5 * abs(one["loss_masks_0"])


def test_box_and_mask_terms_share_one_finiteness_decision(monkeypatch):
    # the decision is a collective on several processes: the mask terms reuse the box terms'
    # flags instead of deciding (and synchronising) a second time per step
    calls = []
    decide = SetCriterionWithMasks.finite_stages
    monkeypatch.setattr(SetCriterionWithMasks, "finite_stages",
                        staticmethod(lambda stages: calls.append(1) or decide(stages)))  # fmt: skip
    losses = _mask_losses([_image(i, diverged_last=i == 1) for i in range(2)])
    assert len(calls) == 1
    assert losses["loss_masks"] != losses["loss_masks"] and losses["loss_masks_0"] > 0
