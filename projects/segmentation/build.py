"""The DDeP task as an instance of the task contract (``docs/internals.md``); the only code that
reads the config for it.

- ``build_model``: :class:`~projects.segmentation.ddep.DDeP` (``MODEL.DDEP.NORM: SyncBN``
  synchronises BN over processes; ``ENCODER_WEIGHTS`` initialises the encoder through the
  engine's :func:`~diffvision.engine.weights.load_weights`);
- ``build_train_loader``: this rank's part of every global batch (every image when pretraining,
  the labeled subset when fine-tuning), noise seeds per sample;
- ``build_test_loader``: one-image batches of this rank's share of a test set;
- ``build_inference``: denoising (fixed noise per image) or whole / sliding-window segmentation;
- ``build_evaluator``: :class:`DenoisingEvaluator` or
  :class:`~diffvision.evaluation.sem_seg.SemSegEvaluator`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from diffvision.config import CfgNode
from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import SegAugmentation
from diffvision.diffusion.schedule import get_schedule
from diffvision.engine.build import build_seed
from diffvision.engine.sync_bn import convert_sync_batchnorm
from diffvision.engine.tasks import register_task
from diffvision.engine.weights import load_weights, register_weight_converter
from diffvision.errors import ConfigError
from diffvision.evaluation.sem_seg import SemSegEvaluator
from diffvision.utils import comm
from projects.segmentation.config import add_ddep_config
from projects.segmentation.data import (
    SegTestBatches,
    build_seg_train_loader,
    check_seg_inputs,
    get_sem_seg_dataset,
    sem_seg_evaluator_kwargs,
    train_records,
)
from projects.segmentation.ddep import DDeP, ResNetUNet, TimmUNet, describe
from projects.segmentation.inference import predict_sem_seg

__all__ = ["DDEP_TASK", "DenoisingEvaluator", "build_ddep_model", "torchvision_to_ddep_encoder"]

logger = logging.getLogger(__name__)

_TORCHVISION_TO_BACKBONE = {
    "conv1.": "stem.0.",
    "bn1.": "stem.1.",
    "layer1.": "layer1.1.",
    "layer2.": "layer2.",
    "layer3.": "layer3.",
    "layer4.": "layer4.",
}


@register_weight_converter
def torchvision_to_ddep_encoder(state: Mapping[str, torch.Tensor]):
    """torchvision ResNet names → the DDeP encoder's (``network.backbone``); ``fc`` dropped.
    ``None`` for files that are not torchvision ResNets."""
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        return None
    mapped = {}
    for key, value in state.items():
        for src, dst in _TORCHVISION_TO_BACKBONE.items():
            if key.startswith(src):
                mapped[dst + key[len(src) :]] = value
                break
    return "torchvision-resnet (DDeP encoder)", mapped


def _build_timm_unet(cfg: CfgNode, *, out_channels: int) -> TimmUNet:
    """``MODEL.DDEP.ENCODER: timm:<name>``: weights from ``MODEL.TIMM.PRETRAINED``, freezing
    from ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.TIMM.NORM``."""
    d = cfg.MODEL.DDEP
    if d.ENCODER_WEIGHTS or d.TRANSFORMER_LAYERS:
        raise ConfigError(
            f"MODEL.DDEP.ENCODER {d.ENCODER!r}: set the weights with MODEL.TIMM.PRETRAINED "
            "(MODEL.DDEP.ENCODER_WEIGHTS is for torchvision ResNets) and keep "
            "MODEL.DDEP.TRANSFORMER_LAYERS 0"
        )
    return TimmUNet(
        name=d.ENCODER.removeprefix("timm:"),
        pretrained=cfg.MODEL.TIMM.PRETRAINED,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=cfg.MODEL.TIMM.NORM,
        out_channels=out_channels,
        decoder_channels=tuple(d.DECODER_CHANNELS),
    )


def build_ddep_model(cfg: CfgNode) -> DDeP:
    """The DDeP model of ``cfg`` on ``MODEL.DEVICE`` (encoder initialised from
    ``MODEL.DDEP.ENCODER_WEIGHTS`` when set; ``MODEL.WEIGHTS`` is the engine's)."""
    d = cfg.MODEL.DDEP
    mode = d.MODE
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if d.ENCODER.startswith("timm:"):
        network = _build_timm_unet(cfg, out_channels=3 if mode == "denoise" else num_classes)
    else:
        network = ResNetUNet(
            encoder=d.ENCODER,
            out_channels=3 if mode == "denoise" else num_classes,
            decoder_channels=tuple(d.DECODER_CHANNELS),
            transformer_layers=d.TRANSFORMER_LAYERS,
            transformer_dim=d.TRANSFORMER_DIM,
            transformer_heads=d.TRANSFORMER_HEADS,
        )
    if d.ENCODER_WEIGHTS:
        # An initialisation of the architecture (like torchvision's pretrained=True), read by
        # the one loader; the encoder must be complete.
        load_weights(network.backbone, d.ENCODER_WEIGHTS)
    if d.NORM not in ("BN", "SyncBN"):
        raise ConfigError(f"MODEL.DDEP.NORM must be 'BN' or 'SyncBN', got {d.NORM!r}")
    if d.NORM == "SyncBN":
        network = convert_sync_batchnorm(network)
    model = DDeP(
        network=network,
        mode=mode,
        num_classes=num_classes,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        noise_sigma=d.NOISE_SIGMA,
        noise_levels=d.NOISE_LEVELS,
        schedule=get_schedule(d.NOISE_SCHEDULE, num_timesteps=d.NUM_TIMESTEPS)
        if d.NOISE_LEVELS == "schedule"
        else None,
        freeze_encoder=d.FREEZE_ENCODER,
    )
    logger.info("%s", describe(model))
    return model.to(cfg.MODEL.DEVICE)


def build_train_loader(cfg: CfgNode, *, start_iter: int = 0):
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
    )


def build_test_loader(cfg: CfgNode, dataset_name: str) -> SegTestBatches:
    records, _ = get_sem_seg_dataset(dataset_name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
    return SegTestBatches(records)


def _noise_seed(file_name: str) -> int:
    """A fixed noise seed per test image (the evaluation is comparable across iterations)."""
    return zlib.crc32(Path(file_name).name.encode())


def build_inference(cfg: CfgNode):
    if cfg.MODEL.DDEP.MODE == "denoise":

        def denoise(model: DDeP, inputs: list[dict]) -> list[dict]:
            images = torch.stack([x["image"] for x in inputs])
            seeds = torch.tensor([_noise_seed(x["file_name"]) for x in inputs])
            return model({"image": images, "seed": seeds})

        return denoise

    def segment(model: DDeP, inputs: list[dict]) -> list[dict]:
        return [
            {
                "sem_seg": predict_sem_seg(
                    model.segment_logits,
                    x["image"],
                    label_size=tuple(x["sem_seg"].shape),
                    num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                    mode=cfg.SEG.TEST_MODE,
                    resize=tuple(cfg.SEG.TEST_RESIZE),
                    window=tuple(cfg.SEG.TEST_WINDOW),
                    stride=tuple(cfg.SEG.TEST_STRIDE),
                    device=model.device,
                )
            }
            for x in inputs
        ]

    return segment


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


DDEP_TASK = register_task(
    "DDeP",
    add_config=add_ddep_config,
    build_model=build_ddep_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_evaluator,
    build_inference=build_inference,
    check_inputs=check_seg_inputs,
)
