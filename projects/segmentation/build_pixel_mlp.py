"""The few-shot ``PixelMLP`` task as an instance of the task contract (``docs/internals.md``):
frozen feature extractor + pixel-MLP ensemble.

- ``build_model``: the ensemble (``MODEL.PIXEL_MLP.NORM: SyncBN`` synchronises its BN);
- ``build_train_loader``: global pixel batches from the training pixels' feature store (float16,
  sub-sampled per image), extracted once and cached on disk keyed by (DDPM checkpoint, blocks,
  timesteps, dataset, ...) — ``--eval-only`` never builds it;
- ``build_test_loader`` / ``build_inference``: each test image re-extracted and predicted in pixel
  chunks;
- ``build_evaluator``: IoU metrics, ``OUTPUT_DIR/predictions/<stem>.png`` (class indices) beside
  ``<stem>_uncertainty.png`` (uncertainty scaled to 0–255).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffvision.config import CfgNode
from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import resize, to_unit_range
from diffvision.diffusion.schedule import get_schedule
from diffvision.engine.build import build_seed
from diffvision.engine.sync_bn import convert_sync_batchnorm
from diffvision.engine.tasks import register_task
from diffvision.errors import ConfigError, DataError
from diffvision.evaluation.sem_seg import SemSegEvaluator
from diffvision.utils import comm
from diffvision.utils.seeding import isolated_rng
from projects.segmentation.config import add_pixel_mlp_config
from projects.segmentation.data import (
    SegTestBatches,
    check_seg_inputs,
    get_sem_seg_dataset,
    sem_seg_evaluator_kwargs,
    train_records,
)
from projects.segmentation.pixel_features import (
    DDPMFeatureExtractor,
    RawPixelExtractor,
    collect_training_pixels,
    gather_pixel_features,
    pixel_grid,
)
from projects.segmentation.pixel_mlp import PixelBatches, PixelMLPEnsemble

__all__ = [
    "PIXEL_MLP_TASK",
    "PixelMLPEvaluator",
    "build_feature_extractor",
    "feature_cache_dir",
    "load_images",
    "predict_image",
    "training_pixel_store",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _parse_flags(text: str) -> dict[str, str]:
    """``"--image_size 256 --learn_sigma True"`` → ``{"image_size": "256", ...}``."""
    tokens = shlex.split(text)
    if len(tokens) % 2 or any(not k.startswith("--") for k in tokens[::2]):
        raise ValueError(f"flags must be '--name value' pairs, got {text!r}")
    return {k[2:]: v for k, v in zip(tokens[::2], tokens[1::2])}


def build_feature_extractor(cfg: CfgNode) -> nn.Module:
    """The frozen extractor of ``MODEL.PIXEL_MLP`` on ``MODEL.DEVICE``."""
    p = cfg.MODEL.PIXEL_MLP
    if p.FEATURES == "raw":
        return RawPixelExtractor().to(cfg.MODEL.DEVICE)
    if p.FEATURES != "ddpm":
        raise ConfigError(f"MODEL.PIXEL_MLP.FEATURES must be 'ddpm' or 'raw', got {p.FEATURES!r}")
    from diffvision.modeling.unet import UNet, load_guided_diffusion_checkpoint

    schedule = get_schedule(p.NOISE_SCHEDULE, num_timesteps=1000)
    if p.DDPM_CHECKPOINT:
        from diffvision.generation.checkpoint import load_ddpm_unet

        unet, schedule, ddpm_cfg = load_ddpm_unet(p.DDPM_CHECKPOINT)
        source = p.DDPM_CHECKPOINT
        if p.RANDOM_UNET:  # same architecture, untrained: the "untrained UNet" baseline
            from diffvision.generation.build import build_unet

            with isolated_rng(build_seed(cfg)):
                unet = build_unet(ddpm_cfg, num_classes=unet.num_classes).eval()
            source = f"random initialisation (architecture of {p.DDPM_CHECKPOINT})"
    else:
        flags = _parse_flags(p.GUIDED_DIFFUSION_FLAGS)
        if str(cfg.MODEL.DEVICE) == "cpu":
            flags["use_fp16"] = "False"  # half-precision convolutions are a GPU feature
        if p.GUIDED_DIFFUSION_CHECKPOINT:
            unet = load_guided_diffusion_checkpoint(p.GUIDED_DIFFUSION_CHECKPOINT, **flags)
            source = p.GUIDED_DIFFUSION_CHECKPOINT
        elif p.RANDOM_UNET:
            with isolated_rng(build_seed(cfg)):
                unet = UNet.from_guided_diffusion_flags(**flags)
            source = "random initialisation"
        else:
            raise ConfigError(
                "MODEL.PIXEL_MLP needs DDPM_CHECKPOINT, GUIDED_DIFFUSION_CHECKPOINT or "
                "RANDOM_UNET True (untrained baseline)"
            )
        schedule = get_schedule(
            flags.get("noise_schedule", p.NOISE_SCHEDULE),
            num_timesteps=int(flags.get("diffusion_steps", 1000)),
        )
    image_size = p.IMAGE_SIZE or getattr(unet, "image_size", 256)
    logger.info(
        "DDPM features from %s: steps %s, blocks %s, %dpx",
        source,
        list(p.STEPS),
        list(p.BLOCKS),
        image_size,
    )
    extractor = DDPMFeatureExtractor(
        unet=unet,
        schedule=schedule,
        steps=tuple(p.STEPS),
        blocks=tuple(p.BLOCKS),
        image_size=image_size,
        noise_seed=p.NOISE_SEED,
    )
    return extractor.to(cfg.MODEL.DEVICE)


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


@torch.no_grad()
def predict_image(
    extractor: nn.Module,
    ensemble: PixelMLPEnsemble,
    image: torch.Tensor,
    *,
    chunk_pixels: int = 8192,
    uncertainty: str = "vote",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority-vote label map and uncertainty map of one image, in pixel chunks.

    Args:
        image: ``(3, H, W)`` in [-1, 1].

    Returns:
        ``labels (H, W)`` int64 and ``uncertainty (H, W)`` float.
    """
    size = tuple(image.shape[-2:])
    device = next(iter(extractor.buffers()), torch.empty(0)).device
    maps = extractor(image[None].to(device))
    coords = pixel_grid(*size)
    labels, unc = [], []
    for start in range(0, coords.shape[0], chunk_pixels):
        feats = gather_pixel_features(maps, coords[start : start + chunk_pixels], size=size)
        lab, u = ensemble.predict(feats, uncertainty=uncertainty)
        labels.append(lab.cpu())
        unc.append(u.cpu())
    return torch.cat(labels).view(size), torch.cat(unc).view(size)


def _check(cfg: CfgNode) -> None:
    p = cfg.MODEL.PIXEL_MLP
    if p.FEATURE_DTYPE not in _DTYPES:
        raise ConfigError(f"MODEL.PIXEL_MLP.FEATURE_DTYPE must be one of {sorted(_DTYPES)}")
    if p.UNCERTAINTY not in ("vote", "entropy"):
        raise ConfigError(
            f"MODEL.PIXEL_MLP.UNCERTAINTY must be 'vote' or 'entropy', got {p.UNCERTAINTY!r}"
        )
    if p.NORM not in ("BN", "SyncBN"):
        raise ConfigError(f"MODEL.PIXEL_MLP.NORM must be 'BN' or 'SyncBN', got {p.NORM!r}")


_EXTRACTORS: dict[str, nn.Module] = {}


def _extractor(cfg: CfgNode) -> nn.Module:
    """The frozen extractor, built once per process for a given extractor config."""
    key = _extractor_key(cfg)
    if key not in _EXTRACTORS:
        _EXTRACTORS.clear()
        _EXTRACTORS[key] = build_feature_extractor(cfg)
    return _EXTRACTORS[key]


def _file_identity(path: str) -> str:
    """Path, size and modification time of a checkpoint (a re-trained file gets a new key)."""
    if not path:
        return ""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _extractor_key(cfg: CfgNode) -> str:
    p = cfg.MODEL.PIXEL_MLP
    parts = [
        p.FEATURES,
        _file_identity(p.DDPM_CHECKPOINT),
        _file_identity(p.GUIDED_DIFFUSION_CHECKPOINT),
        p.GUIDED_DIFFUSION_FLAGS if not p.DDPM_CHECKPOINT else "",
        f"random={p.RANDOM_UNET}:{cfg.SEED if p.RANDOM_UNET else ''}",
        p.NOISE_SCHEDULE,
        list(p.STEPS),
        list(p.BLOCKS),
        p.NOISE_SEED,
        p.IMAGE_SIZE,
        str(cfg.MODEL.DEVICE),
    ]
    return repr(parts)


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
            _extractor_key(cfg),
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
        _extractor(cfg),
        images,
        masks,
        pixels_per_image=p.PIXELS_PER_IMAGE,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        dtype=_DTYPES[p.FEATURE_DTYPE],
        seed=build_seed(cfg),
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


def _feature_dim(cfg: CfgNode) -> int:
    """D of the extractor's per-pixel features (one forward of a blank image)."""
    size = cfg.MODEL.PIXEL_MLP.IMAGE_SIZE or 8
    extractor = _extractor(cfg)
    device = next(iter(extractor.buffers()), torch.empty(0)).device
    with torch.no_grad():
        maps = extractor(torch.zeros(1, 3, size, size, device=device))
    return sum(int(m.shape[1]) for m in maps)


def build_model(cfg: CfgNode) -> PixelMLPEnsemble:
    """The MLP ensemble (D from the extractor, not from the training store, so that
    ``--eval-only`` extracts no training feature)."""
    _check(cfg)
    p = cfg.MODEL.PIXEL_MLP
    model = PixelMLPEnsemble(
        in_features=_feature_dim(cfg),
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        num_models=p.NUM_MODELS,
    )
    if p.NORM == "SyncBN":
        model = convert_sync_batchnorm(model)
    return model.to(cfg.MODEL.DEVICE)


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


def build_inference(cfg: CfgNode):
    p = cfg.MODEL.PIXEL_MLP

    def run(ensemble: PixelMLPEnsemble, inputs: list[dict]) -> list[dict]:
        outputs = []
        for x in inputs:
            image = x["image"].float() / 127.5 - 1.0
            pred, unc = predict_image(
                _extractor(cfg),
                ensemble,
                image,
                chunk_pixels=p.CHUNK_PIXELS,
                uncertainty=p.UNCERTAINTY,
            )
            outputs.append({"sem_seg": pred, "uncertainty": unc})
        return outputs

    return run


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


PIXEL_MLP_TASK = register_task(
    "PixelMLP",
    add_config=add_pixel_mlp_config,
    build_model=build_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_evaluator,
    build_inference=build_inference,
    check_inputs=check_seg_inputs,
)
