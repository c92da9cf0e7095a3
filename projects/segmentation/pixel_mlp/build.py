"""Config -> PixelMLP model: the model builder of the PixelMLP task.

- :func:`build_feature_extractor`: the frozen feature extractor (DDPM UNet activations or raw
  pixels), built once per process (:func:`cached_extractor`);
- :func:`build_model`: the pixel-MLP ensemble (``MODEL.PIXEL_MLP.NORM: SyncBN`` synchronises its
  BN); the feature width comes from the extractor, so ``--eval-only`` extracts no training
  feature;
- :func:`build_inference`: each test image's features predicted in pixel chunks
  (:func:`predict_image`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from diffvision.config import CfgNode
from diffvision.diffusion.schedule import get_schedule
from diffvision.engine.build import build_seed
from diffvision.engine.sync_bn import convert_sync_batchnorm
from diffvision.errors import ConfigError
from diffvision.generation.build import build_unet
from diffvision.generation.checkpoint import load_ddpm_unet
from diffvision.modeling.unet import (
    UNet,
    load_guided_diffusion_checkpoint,
    parse_guided_diffusion_flags,
)
from diffvision.utils.seeding import Stream, derive_seed, isolated_rng

from .features import DDPMFeatureExtractor, RawPixelExtractor, gather_pixel_features, pixel_grid
from .model import PixelMLPEnsemble

__all__ = [
    "FEATURE_DTYPES",
    "build_feature_extractor",
    "build_inference",
    "build_model",
    "cached_extractor",
    "extractor_key",
    "predict_image",
]

logger = logging.getLogger(__name__)

FEATURE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def build_feature_extractor(cfg: CfgNode) -> nn.Module:
    """The frozen extractor of ``MODEL.PIXEL_MLP`` on ``MODEL.DEVICE``."""
    p = cfg.MODEL.PIXEL_MLP
    if p.FEATURES == "raw":
        return RawPixelExtractor().to(cfg.MODEL.DEVICE)
    if p.FEATURES != "ddpm":
        raise ConfigError(f"MODEL.PIXEL_MLP.FEATURES must be 'ddpm' or 'raw', got {p.FEATURES!r}")
    schedule = get_schedule(p.NOISE_SCHEDULE, num_timesteps=1000)
    if p.DDPM_CHECKPOINT:
        unet, schedule, ddpm_cfg = load_ddpm_unet(p.DDPM_CHECKPOINT)
        source = p.DDPM_CHECKPOINT
        if p.RANDOM_UNET:  # same architecture, untrained: the "untrained UNet" baseline
            with isolated_rng(build_seed(cfg)):
                unet = build_unet(ddpm_cfg, num_classes=unet.num_classes).eval()
            source = f"random initialisation (architecture of {p.DDPM_CHECKPOINT})"
    else:
        flags = parse_guided_diffusion_flags(p.GUIDED_DIFFUSION_FLAGS)
        if str(cfg.MODEL.DEVICE) == "cpu":
            flags["use_fp16"] = False  # half-precision convolutions are a GPU feature
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
        noise_seed=derive_seed(p.NOISE_SEED, Stream.FEATURE_NOISE),
    )
    return extractor.to(cfg.MODEL.DEVICE)


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
    if p.FEATURE_DTYPE not in FEATURE_DTYPES:
        raise ConfigError(f"MODEL.PIXEL_MLP.FEATURE_DTYPE must be one of {sorted(FEATURE_DTYPES)}")
    if p.UNCERTAINTY not in ("vote", "entropy"):
        raise ConfigError(
            f"MODEL.PIXEL_MLP.UNCERTAINTY must be 'vote' or 'entropy', got {p.UNCERTAINTY!r}"
        )
    if p.NORM not in ("BN", "SyncBN"):
        raise ConfigError(f"MODEL.PIXEL_MLP.NORM must be 'BN' or 'SyncBN', got {p.NORM!r}")


_EXTRACTORS: dict[str, nn.Module] = {}


def cached_extractor(cfg: CfgNode) -> nn.Module:
    """The frozen extractor, built once per process for a given extractor config."""
    key = extractor_key(cfg)
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


def extractor_key(cfg: CfgNode) -> str:
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


def _feature_dim(cfg: CfgNode) -> int:
    """D of the extractor's per-pixel features (one forward of a blank image)."""
    size = cfg.MODEL.PIXEL_MLP.IMAGE_SIZE or 8
    extractor = cached_extractor(cfg)
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


def build_inference(cfg: CfgNode):
    """The evaluation call: each test image's features extracted and classified in pixel chunks
    (``MODEL.PIXEL_MLP.CHUNK_PIXELS``) by the ensemble's vote."""
    p = cfg.MODEL.PIXEL_MLP

    def run(ensemble: PixelMLPEnsemble, inputs: list[dict]) -> list[dict]:
        outputs = []
        for x in inputs:
            image = x["image"].float() / 127.5 - 1.0
            pred, unc = predict_image(
                cached_extractor(cfg),
                ensemble,
                image,
                chunk_pixels=p.CHUNK_PIXELS,
                uncertainty=p.UNCERTAINTY,
            )
            outputs.append({"sem_seg": pred, "uncertainty": unc})
        return outputs

    return run
