"""Config -> PixelMLP data: global pixel batches from the training pixels' feature store
(float16, sub-sampled per image), extracted once and cached on disk keyed by everything it
depends on (``--eval-only`` never builds it); one-image test batches resized to the UNet's
resolution; the evaluator (IoU metrics, ``OUTPUT_DIR/predictions/<stem>.png`` class indices
beside ``<stem>_uncertainty.png``, uncertainty scaled to 0–255). The dataset names, label
fractions and input checks are the segmentation tasks' shared ones
(:mod:`projects.segmentation.data`)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffvision.config import CfgNode
from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import resize, to_unit_range
from diffvision.engine.build import build_seed
from diffvision.errors import DataError
from diffvision.evaluation.sem_seg import SemSegEvaluator
from diffvision.utils import comm
from diffvision.utils.seeding import Stream, derive_seed
from projects.segmentation.data import (
    SegTestBatches,
    get_sem_seg_dataset,
    sem_seg_evaluator_kwargs,
    train_records,
)

from .build import FEATURE_DTYPES, cached_extractor, extractor_key
from .features import collect_training_pixels
from .model import PixelBatches

__all__ = [
    "PixelMLPEvaluator",
    "build_evaluator",
    "build_test_loader",
    "build_train_loader",
    "feature_cache_dir",
    "load_images",
    "training_pixel_store",
]

logger = logging.getLogger(__name__)


def load_images(
    records: Sequence[dict],
    *,
    image_size: int,
    num_classes: int | None = None,
    ignore_label: int = 255,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images ``(3, S, S)`` in [-1, 1] and masks ``(S, S)`` resized (nearest) to ``image_size``
    (``0`` keeps the original size). With ``num_classes``, a mask label ``>= num_classes``
    other than ``ignore_label`` raises ``DataError`` naming the mask file."""
    images, masks = [], []
    for item in SemSegDataset(records, num_classes=num_classes, ignore_label=ignore_label):
        image, mask = item["image"], item["sem_seg"]
        if image_size:
            image, mask = resize(image, mask, size=(image_size, image_size))
        images.append(to_unit_range(image))
        masks.append(mask)
    return images, masks


def feature_cache_dir() -> Path:
    """``$DIFFVISION_CACHE/pixel_features`` (default ``~/.cache/diffvision/pixel_features``)."""
    root = os.environ.get("DIFFVISION_CACHE") or Path.home() / ".cache" / "diffvision"
    return Path(root) / "pixel_features"


def training_pixel_store(cfg: CfgNode) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` and labels ``(N,)`` of the labeled training pixels.

    Cached on disk (:func:`feature_cache_dir`) under a key of everything the store depends on:
    the DDPM checkpoint (path, size, mtime), blocks, timesteps, noise seed, image size, the
    labeled training images, pixels per image, dtype and seed; a second run (another
    ``NUM_MODELS``, a resumed run) loads it instead of running the UNet again.
    """
    p = cfg.MODEL.PIXEL_MLP
    records = train_records(cfg, labeled=True)
    key = repr(
        [
            extractor_key(cfg),
            sorted(str(Path(r["file_name"]).resolve()) for r in records),
            p.PIXELS_PER_IMAGE,
            p.FEATURE_DTYPE,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            build_seed(cfg),
        ]
    )
    path = feature_cache_dir() / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        logger.info("Training pixel features from the cache %s", path)
        return data["features"], data["labels"]
    images, masks = load_images(
        records,
        image_size=p.IMAGE_SIZE,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
    features, labels = collect_training_pixels(
        cached_extractor(cfg),
        images,
        masks,
        pixels_per_image=p.PIXELS_PER_IMAGE,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        dtype=FEATURE_DTYPES[p.FEATURE_DTYPE],
        seed=derive_seed(build_seed(cfg), Stream.TRAIN_PIXELS),
    )
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if int(labels.max()) >= num_classes:
        raise DataError(f"labels reach {int(labels.max())} but NUM_CLASSES is {num_classes}")
    if comm.is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"features": features, "labels": labels, "key": key}, tmp)
        os.replace(tmp, path)
        logger.info("Cached the training pixel features in %s", path)
    return features, labels


def build_train_loader(cfg: CfgNode, *, start_iter: int = 0) -> PixelBatches:
    features, labels = training_pixel_store(cfg)
    return PixelBatches(
        features,
        labels,
        num_models=cfg.MODEL.PIXEL_MLP.NUM_MODELS,
        batch_pixels=cfg.MODEL.PIXEL_MLP.BATCH_PIXELS,
        seed=build_seed(cfg),
        start_iter=start_iter,
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
    )


class _ResizedTestBatches(SegTestBatches):
    """One-image batches resized to ``MODEL.PIXEL_MLP.IMAGE_SIZE``: ``image`` (3, S, S) uint8,
    ``sem_seg`` (S, S), ``file_name``."""

    def __init__(self, records, *, image_size: int) -> None:
        super().__init__(records)
        self.image_size = image_size

    def __iter__(self):
        for record in self.records:
            (image,), (mask,) = load_images([record], image_size=self.image_size)
            image_u8 = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            yield [{"image": image_u8, "sem_seg": mask, "file_name": record["file_name"]}]


def build_test_loader(cfg: CfgNode, dataset_name: str) -> _ResizedTestBatches:
    records, _ = get_sem_seg_dataset(dataset_name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
    return _ResizedTestBatches(records, image_size=cfg.MODEL.PIXEL_MLP.IMAGE_SIZE)


class PixelMLPEvaluator(SemSegEvaluator):
    """IoU metrics plus ``predictions/<stem>.png`` (class indices) and
    ``<stem>_uncertainty.png`` (uncertainty × ``uncertainty_scale``, clipped to 0–255)."""

    def __init__(self, *, prediction_dir: Path, uncertainty_scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prediction_dir = Path(prediction_dir)
        self.uncertainty_scale = uncertainty_scale

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        super().process(inputs, outputs)
        self.prediction_dir.mkdir(parents=True, exist_ok=True)
        for x, out in zip(inputs, outputs, strict=True):
            stem = Path(x["file_name"]).stem
            pred = out["sem_seg"].numpy().astype(np.uint8)
            Image.fromarray(pred, mode="L").save(self.prediction_dir / f"{stem}.png")
            unc = (out["uncertainty"].numpy() * self.uncertainty_scale).clip(0, 255)
            Image.fromarray(unc.astype(np.uint8), mode="L").save(
                self.prediction_dir / f"{stem}_uncertainty.png"
            )


def build_evaluator(cfg: CfgNode, dataset_name: str) -> PixelMLPEvaluator:
    vote = cfg.MODEL.PIXEL_MLP.UNCERTAINTY == "vote"
    return PixelMLPEvaluator(
        prediction_dir=Path(cfg.OUTPUT_DIR) / "predictions" / Path(dataset_name).name,
        uncertainty_scale=255.0 if vote else 255.0 / np.log(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        **sem_seg_evaluator_kwargs(cfg, dataset_name),
    )
