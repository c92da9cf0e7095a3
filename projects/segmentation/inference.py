"""Dataset-level evaluation loops shared by the segmentation tasks (rank-sharded, gathered)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import to_unit_range
from diffvision.engine import comm
from diffvision.evaluation.sem_seg import (
    SemSegEvaluator,
    sliding_window_inference,
    whole_image_inference,
)

__all__ = ["evaluate_denoising", "evaluate_sem_seg"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_sem_seg(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    records: Sequence[dict],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    palette=None,
    ignore_label: int = 255,
    mode: str = "whole",
    resize: tuple[int, int] = (0, 0),
    window: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] = (341, 683),
    vis_dir: str | Path | None = None,
    num_vis: int = 4,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """mIoU of ``logits_fn`` over ``records`` (this rank's share; confusion matrices summed).

    Args:
        logits_fn: ``x (1, 3, h, w) in [-1, 1] -> logits (1, C, h, w)``.
        records: sem-seg records with masks.
        mode: ``"whole"`` or ``"slide"``.
        resize: ``(h, w)`` test-input size, ``(0, 0)`` = original; logits are resized back to
            the label size before the argmax.
        window, stride: sliding-window geometry in pixels (of the resized input).
        vis_dir: folder for image | GT | prediction overlays (main process only).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"test mode must be 'whole' or 'slide', got {mode!r}")
    evaluator = SemSegEvaluator(
        num_classes=num_classes,
        ignore_label=ignore_label,
        class_names=class_names,
        palette=palette,
        output_dir=vis_dir if comm.is_main_process() else None,
        num_visualizations=num_vis,
    )
    rank, world = comm.get_rank(), comm.get_world_size()
    dataset = SemSegDataset(list(records)[rank::world])
    for item in dataset:
        image = item["image"]  # (3, H, W) uint8
        x = to_unit_range(image)[None].to(device)
        label_size = tuple(item["sem_seg"].shape)
        if all(resize):
            x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
        if mode == "whole":
            logits = whole_image_inference(logits_fn, x)
        else:
            logits = sliding_window_inference(
                logits_fn, x, window=window, stride=stride, num_classes=num_classes
            )
        if tuple(logits.shape[-2:]) != label_size:
            logits = F.interpolate(logits, size=label_size, mode="bilinear", align_corners=False)
        pred = logits[0].argmax(0).cpu()
        evaluator.process(pred, item["sem_seg"], image=image, name=Path(item["file_name"]).stem)
    confusion = sum(comm.all_gather(evaluator.confusion))
    evaluator.confusion = np.asarray(confusion)
    return evaluator.evaluate() if comm.is_main_process() else {}


@torch.no_grad()
def evaluate_denoising(model: torch.nn.Module, records: Sequence[dict]) -> dict[str, float]:
    """Mean ε-prediction MSE on ``records`` with a fixed noise seed (pretraining progress)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    dataset = SemSegDataset(list(records)[rank::world])
    generator = torch.Generator(device=model.device).manual_seed(0)
    total, count = 0.0, 0
    for item in dataset:
        outs = model({"image": item["image"][None], "generator": generator})
        total += float(F.mse_loss(outs[0]["noise_pred"], outs[0]["noise"]))
        count += 1
    totals = comm.all_gather((total, count))
    total, count = sum(t for t, _ in totals), sum(c for _, c in totals)
    return {"denoise/mse": total / max(count, 1)} if comm.is_main_process() else {}
