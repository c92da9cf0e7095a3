"""Config -> DDeP data: this rank's part of every global training batch (every image when
pretraining, the labeled subset when fine-tuning; noise seeds per sample), one-image test
batches, and the evaluator (denoising MSE or mIoU). The dataset names, label fractions and input
checks are the segmentation tasks' shared ones (:mod:`projects.segmentation.data`)."""

from __future__ import annotations

import torch.nn.functional as F

from diffvision.config import CfgNode
from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import SegAugmentation
from diffvision.engine.build import build_seed
from diffvision.evaluation.sem_seg import SemSegEvaluator
from diffvision.utils import comm
from projects.segmentation.data import (
    SegTestBatches,
    build_seg_train_loader,
    class_loss_weights,
    get_sem_seg_dataset,
    sem_seg_evaluator_kwargs,
    train_records,
)

__all__ = ["DenoisingEvaluator", "build_evaluator", "build_test_loader", "build_train_loader"]


def build_train_loader(cfg: CfgNode, *, start_iter: int = 0):
    """This rank's part of every global batch from ``start_iter`` on (crops, flips and noise
    seeds from ``(SEED, iteration, position)``)."""
    # Pretraining uses every image, labeled or not; fine-tuning the labeled subset.
    records = train_records(cfg, labeled=cfg.MODEL.DDEP.MODE != "denoise")
    base = tuple(cfg.SEG.BASE_SIZE)
    augment = SegAugmentation(
        crop_size=tuple(cfg.SEG.CROP_SIZE),
        scale_range=tuple(cfg.SEG.SCALE_RANGE),
        base_size=base if all(base) else None,
        flip_prob=cfg.SEG.FLIP_PROB,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
    head = cfg.MODEL.SEM_SEG_HEAD
    class_weights = None
    if cfg.MODEL.DDEP.MODE == "segment" and head.CLASS_WEIGHT_POWER > 0:
        class_weights = class_loss_weights(
            records,
            num_classes=head.NUM_CLASSES,
            ignore_label=head.IGNORE_VALUE,
            power=head.CLASS_WEIGHT_POWER,
        )
    return build_seg_train_loader(
        SemSegDataset(
            records,
            transform=augment,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ),
        seed=build_seed(cfg),
        global_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        start_iter=start_iter,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        class_weights=class_weights,
    )


def build_test_loader(cfg: CfgNode, dataset_name: str) -> SegTestBatches:
    records, _ = get_sem_seg_dataset(dataset_name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
    return SegTestBatches(records)


class DenoisingEvaluator:
    """Mean ε-prediction MSE (pretraining progress) over all ranks' images; detectron2's
    evaluator shape. Outputs are ``[{"noise_pred": (3, H, W), "noise": (3, H, W)}]``."""

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for out in outputs:
            self.total += float(F.mse_loss(out["noise_pred"], out["noise"]))
            self.count += 1

    def evaluate(self) -> dict[str, float]:
        parts = comm.all_gather((self.total, self.count))
        total, count = sum(t for t, _ in parts), sum(c for _, c in parts)
        return {"denoise/mse": total / max(count, 1)} if comm.is_main_process() else {}


def build_evaluator(cfg: CfgNode, dataset_name: str):
    if cfg.MODEL.DDEP.MODE == "denoise":
        return DenoisingEvaluator()
    return SemSegEvaluator(**sem_seg_evaluator_kwargs(cfg, dataset_name))
