"""Dataset-level evaluation loops shared by the segmentation tasks (rank-sharded, gathered)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import to_unit_range
from diffvision.evaluation.sem_seg import (
    SemSegEvaluator,
    sliding_window_inference,
    whole_image_inference,
)
from diffvision.utils import comm

__all__ = ["evaluate_sem_seg", "predict_sem_seg"]

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
        pred = predict_sem_seg(
            logits_fn,
            item["image"],
            label_size=tuple(item["sem_seg"].shape),
            num_classes=num_classes,
            mode=mode,
            resize=resize,
            window=window,
            stride=stride,
            device=device,
        )
        evaluator.process([item], [{"sem_seg": pred}])
    return evaluator.evaluate()


@torch.no_grad()
def predict_sem_seg(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    label_size: tuple[int, int],
    num_classes: int,
    mode: str = "whole",
    resize: tuple[int, int] = (0, 0),
    window: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] = (341, 683),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Class indices ``(h, w)`` (``label_size``) of one ``(3, H, W)`` uint8 image (see
    :func:`evaluate_sem_seg` for the arguments)."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"test mode must be 'whole' or 'slide', got {mode!r}")
    x = to_unit_range(image)[None].to(device)
    if all(resize):
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
    if mode == "whole":
        logits = whole_image_inference(logits_fn, x)
    else:
        logits = sliding_window_inference(
            logits_fn, x, window=window, stride=stride, num_classes=num_classes
        )
    if tuple(logits.shape[-2:]) != tuple(label_size):
        logits = F.interpolate(logits, size=tuple(label_size), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu()
