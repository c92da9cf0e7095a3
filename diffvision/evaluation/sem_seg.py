"""Semantic-segmentation evaluation: confusion matrix → per-class IoU, mIoU, pixel accuracy.

Metric (the Cityscapes official script, ``cityscapesscripts`` ``evalPixelLevelSemanticLabeling``,
and mmsegmentation's ``IoUMetric``): one confusion matrix ``M[g, p]`` (ground truth ``g``,
prediction ``p``) accumulated over the *whole* evaluated set, not averaged per image. Pixels
whose ground truth is ``ignore_label`` are dropped before counting, so predictions on ignored
pixels are never penalised. With ``TP_c = M[c, c]``, ``FN_c = Σ_p M[c, p] − TP_c``,
``FP_c = Σ_g M[g, c] − TP_c``::

    IoU_c = TP_c / (TP_c + FP_c + FN_c)          (NaN when the denominator is 0)
    mIoU  = nanmean_c IoU_c                       (over the evaluated classes)
    pACC  = Σ_c TP_c / Σ_{g,p} M[g, p]

Note the DDPM-segmentation repository (``yandex-research/ddpm-segmentation``) instead scores
absent classes as 0; we follow the Cityscapes nan-mean. After every evaluation the per-class IoU
table goes to the log and, with ``report_dir``, to ``<dataset>_per_class.csv``.

Inference helpers run a ``logits_fn: (B, 3, h, w) -> (B, C, h, w)`` on a whole image or over a
sliding window (overlapping logits averaged), and :func:`colorize` / :func:`overlay` write
colour PNGs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffvision.evaluation.reports import format_table, report_file, write_csv
from diffvision.utils import comm

__all__ = [
    "SemSegEvaluator",
    "colorize",
    "default_palette",
    "foreground_miou",
    "iou_from_confusion",
    "overlay",
    "sliding_window_inference",
    "whole_image_inference",
]

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def default_palette(num_classes: int) -> np.ndarray:
    """A fixed pseudo-random ``(num_classes, 3)`` uint8 palette (class 0 black)."""
    rng = np.random.default_rng(12345)
    palette = rng.integers(40, 256, size=(max(num_classes, 1), 3)).astype(np.uint8)
    palette[0] = 0
    return palette


def iou_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class IoU, mIoU and pixel accuracy from a confusion matrix.

    Args:
        confusion: ``(C, C)`` counts, rows = ground truth, columns = prediction.

    Returns:
        ``{"iou": (C,) float64 with NaN for classes absent from GT and prediction,
        "miou": nan-mean of iou, "pacc": pixel accuracy, "acc": (C,) per-class recall}``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    gt_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = confusion.sum()
    valid = ~np.isnan(iou)
    return {
        "iou": iou,
        "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
        "pacc": float(tp.sum() / total) if total > 0 else float("nan"),
        "acc": acc,
    }


def foreground_miou(
    ious: Sequence[float], class_names: Sequence[str], *, background: str = "background"
) -> float:
    """Mean IoU over every class but the one named ``background``, classes whose IoU is NaN
    (absent from ground truth and prediction) skipped as in the mIoU; NaN when none is left.

    Args:
        ious: per-class IoU, in the order of ``class_names`` (any scale: fractions or %).
        class_names: one name per class.
    """
    values = [v for v, n in zip(ious, class_names, strict=True) if n != background and v == v]
    return sum(values) / len(values) if values else float("nan")


def colorize(mask: np.ndarray | torch.Tensor, palette: np.ndarray, *, ignore_label: int = 255):
    """Map class indices ``(H, W)`` to RGB ``(H, W, 3)`` uint8; ignore → white."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    if ignore_label < 256:
        lut[ignore_label] = 255
    return lut[np.clip(mask, 0, 255)]


def overlay(image: np.ndarray, colour_mask: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB image ``(H, W, 3)`` uint8 with a colour mask of the same size."""
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour_mask.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


@torch.no_grad()
def whole_image_inference(
    logits_fn: LogitsFn, image: torch.Tensor, *, output_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Run ``logits_fn`` on the whole image and resize logits bilinearly to ``output_size``.

    Args:
        logits_fn: ``(B, 3, h, w) -> (B, C, h', w')``.
        image: ``(B, 3, H, W)``.
        output_size: target ``(H_out, W_out)``; default the input size.

    Returns:
        logits ``(B, C, H_out, W_out)``.
    """
    logits = logits_fn(image)
    size = output_size or tuple(image.shape[-2:])
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def sliding_window_inference(
    logits_fn: LogitsFn,
    image: torch.Tensor,
    *,
    window: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int,
) -> torch.Tensor:
    """Average logits over overlapping windows (mmseg ``slide`` mode).

    Windows start every ``stride`` pixels; the last row/column of windows is shifted to end at
    the image border so every pixel is covered. An image smaller than ``window`` is run whole.

    Args:
        logits_fn: ``(B, 3, h, w) -> (B, C, h, w)`` at input resolution.
        image: ``(B, 3, H, W)``.
        window: ``(h, w)`` crop size.
        stride: ``(sh, sw)`` step, ``0 < stride <= window``.
        num_classes: ``C``.

    Returns:
        logits ``(B, C, H, W)``.
    """
    if not (0 < stride[0] <= window[0] and 0 < stride[1] <= window[1]):
        raise ValueError(f"stride {stride} must lie in (0, window {window}]")
    batch, _, height, width = image.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    rows = max(math.ceil((height - win_h) / stride[0]), 0) + 1
    cols = max(math.ceil((width - win_w) / stride[1]), 0) + 1
    logits_sum = image.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    counts = image.new_zeros((1, 1, height, width), dtype=torch.float32)
    for r in range(rows):
        top = min(r * stride[0], height - win_h)
        for c in range(cols):
            left = min(c * stride[1], width - win_w)
            crop = image[:, :, top : top + win_h, left : left + win_w]
            logits = whole_image_inference(logits_fn, crop)
            logits_sum[:, :, top : top + win_h, left : left + win_w] += logits.float()
            counts[:, :, top : top + win_h, left : left + win_w] += 1
    return logits_sum / counts


class SemSegEvaluator:
    """Accumulates a confusion matrix over a dataset and reports IoU metrics.

    Usage::

        evaluator = SemSegEvaluator(num_classes=19, class_names=CITYSCAPES_CLASSES)
        evaluator.reset()
        for inputs in loader:  # [{"sem_seg": (H, W), "image": (3, H, W) uint8, "file_name"}]
            evaluator.process(inputs, outputs)  # [{"sem_seg": (H, W) labels or (C, H, W)}]
        metrics = evaluator.evaluate()   # {"sem_seg/mIoU": ..., "sem_seg/pACC": ..., ...}

    (detectron2's ``DatasetEvaluator`` shape; :meth:`process_image` adds one prediction
    directly). :meth:`evaluate` sums the confusion matrices of all ranks.

    Args:
        num_classes: number of evaluated classes ``C``; ground truth outside ``[0, C)`` other than
            ``ignore_label`` raises.
        ignore_label: ground-truth value excluded from all counts.
        class_names: names for the per-class keys; default ``"class_<i>"``.
        palette: ``(C, 3)`` colours for visualisations; default :func:`default_palette`.
        output_dir: where to write overlays (``<output_dir>/<name>.png``); ``None`` writes none.
        num_visualizations: overlays for the first this-many processed images.
        report_dir: where the per-class IoU table is written as ``<dataset_name>_per_class.csv``
            (``None``: the log only).
        dataset_name: names the table and its file.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        ignore_label: int = 255,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        output_dir: str | Path | None = None,
        num_visualizations: int = 4,
        report_dir: str | Path | None = None,
        dataset_name: str = "sem_seg",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        self.palette = np.asarray(palette if palette is not None else default_palette(num_classes))
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.num_visualizations = num_visualizations
        self.report_dir = Path(report_dir) if report_dir is not None else None
        self.dataset_name = str(dataset_name)
        self.reset()

    def reset(self) -> None:
        """Clear the confusion matrix."""
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._num_visualized = 0

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Add a batch: ``inputs[i]`` has ``sem_seg`` (H, W) ground truth and optionally
        ``image`` (3, H, W) uint8 and ``file_name``; ``outputs[i]["sem_seg"]`` is (H, W) class
        indices or (C, H, W) scores (argmax taken)."""
        for x, out in zip(inputs, outputs, strict=True):
            pred = out["sem_seg"]
            if pred.ndim == 3:
                pred = pred.argmax(0)
            name = Path(x["file_name"]).stem if "file_name" in x else None
            self.process_image(pred, x["sem_seg"], image=x.get("image"), name=name)

    def process_image(
        self,
        pred: torch.Tensor | np.ndarray,
        gt: torch.Tensor | np.ndarray,
        *,
        image: torch.Tensor | np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        """Add one image.

        Args:
            pred: ``(H, W)`` predicted class indices.
            gt: ``(H, W)`` ground truth with ``ignore_label`` for unlabeled pixels.
            image: optional ``(3, H, W)`` or ``(H, W, 3)`` uint8 image for the overlay.
            name: file stem of the overlay.
        """
        pred = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred).astype(np.int64)
        gt = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
        valid = gt != self.ignore_label
        gt_v, pred_v = gt[valid], pred[valid]
        if gt_v.size and (gt_v.min() < 0 or gt_v.max() >= self.num_classes):
            raise ValueError(
                f"ground truth has labels outside [0, {self.num_classes}) and != "
                f"ignore_label {self.ignore_label}: {np.unique(gt_v)[:10]}"
            )
        if pred_v.size and (pred_v.min() < 0 or pred_v.max() >= self.num_classes):
            raise ValueError(f"prediction has labels outside [0, {self.num_classes})")
        index = gt_v * self.num_classes + pred_v
        self.confusion += np.bincount(index, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )
        if (
            self.output_dir is not None
            and image is not None
            and self._num_visualized < self.num_visualizations
        ):
            self._write_overlay(image, pred, gt, name or f"{self._num_visualized:05d}")
            self._num_visualized += 1

    def _write_overlay(self, image, pred: np.ndarray, gt: np.ndarray, name: str) -> None:
        image = np.asarray(image.cpu() if isinstance(image, torch.Tensor) else image)
        if image.shape[0] == 3 and image.ndim == 3:
            image = image.transpose(1, 2, 0)
        image = image.astype(np.uint8)
        pred_rgb = overlay(image, colorize(pred, self.palette, ignore_label=self.ignore_label))
        gt_rgb = overlay(image, colorize(gt, self.palette, ignore_label=self.ignore_label))
        panel = np.concatenate([image, gt_rgb, pred_rgb], axis=1)  # image | GT | prediction
        self.output_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(panel).save(self.output_dir / f"{name}.png")

    def evaluate(self) -> dict[str, float]:
        """Metrics ×100, flat: ``sem_seg/mIoU``, ``sem_seg/pACC``, ``sem_seg/IoU-<name>``, over
        the confusion matrices of all ranks (``{}`` on the other ranks)."""
        confusion = np.asarray(sum(comm.all_gather(self.confusion)))
        if not comm.is_main_process():
            return {}
        result = iou_from_confusion(confusion)
        metrics = {
            "sem_seg/mIoU": 100.0 * result["miou"],
            "sem_seg/pACC": 100.0 * result["pacc"],
        }
        rows = []
        for name, iou, acc in zip(self.class_names, result["iou"], result["acc"]):
            metrics[f"sem_seg/IoU-{name}"] = 100.0 * float(iou)
            rows.append((name, 100.0 * float(iou), 100.0 * float(acc)))
        header = ("class", "IoU", "Acc")
        logger.info("%s per-class IoU:\n%s", self.dataset_name, format_table(header, rows))
        if self.report_dir is not None:
            path = report_file(self.report_dir, self.dataset_name, "per_class.csv")
            logger.info("Wrote %s", write_csv(path, header, rows))
        return metrics
