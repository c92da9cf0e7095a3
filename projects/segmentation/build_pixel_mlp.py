"""Builder of the few-shot ``PixelMLP`` task: frozen feature extractor + pixel-MLP ensemble.

The builder extracts the training pixels' features once (kept in RAM, float16, sub-sampled per
image) and hands the engine the MLP ensemble with an endless loader over that store;
evaluation re-extracts each test image and predicts it in pixel chunks, writing
``OUTPUT_DIR/predictions/<stem>.png`` (class indices) beside ``<stem>_uncertainty.png``
(uncertainty scaled to 0–255).
"""

from __future__ import annotations

import logging
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
from diffvision.engine import comm
from diffvision.engine.tasks import Task, register_task
from diffvision.errors import ConfigError
from diffvision.evaluation.sem_seg import SemSegEvaluator
from diffvision.modeling.weight_files import safe_torch_load
from projects.segmentation.config import add_pixel_mlp_config
from projects.segmentation.data import get_sem_seg_dataset, train_records
from projects.segmentation.pixel_features import (
    DDPMFeatureExtractor,
    RawPixelExtractor,
    collect_training_pixels,
    gather_pixel_features,
    pixel_grid,
)
from projects.segmentation.pixel_mlp import PixelBatches, PixelMLPEnsemble

__all__ = [
    "build_feature_extractor",
    "build_pixel_mlp_task",
    "load_images",
    "predict_image",
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

            torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
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
            torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
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


@register_task("PixelMLP", add_config=add_pixel_mlp_config)
def build_pixel_mlp_task(cfg: CfgNode) -> Task:
    """Few-shot segmentation: pixel-MLP ensemble on frozen DDPM (or raw-pixel) features."""
    p = cfg.MODEL.PIXEL_MLP
    if p.FEATURE_DTYPE not in _DTYPES:
        raise ConfigError(f"MODEL.PIXEL_MLP.FEATURE_DTYPE must be one of {sorted(_DTYPES)}")
    if p.UNCERTAINTY not in ("vote", "entropy"):
        raise ConfigError(
            f"MODEL.PIXEL_MLP.UNCERTAINTY must be 'vote' or 'entropy', got {p.UNCERTAINTY!r}"
        )
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    seed = cfg.SEED if cfg.SEED >= 0 else 0
    extractor = build_feature_extractor(cfg)
    image_size = p.IMAGE_SIZE

    records = train_records(cfg, labeled=True)
    images, masks = load_images(
        records, image_size=image_size, num_classes=num_classes, ignore_label=ignore
    )
    features, labels = collect_training_pixels(
        extractor,
        images,
        masks,
        pixels_per_image=p.PIXELS_PER_IMAGE,
        ignore_label=ignore,
        dtype=_DTYPES[p.FEATURE_DTYPE],
        seed=seed,
    )
    del images, masks
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels reach {int(labels.max())} but NUM_CLASSES is {num_classes}")
    torch.manual_seed(seed)
    model = PixelMLPEnsemble(
        in_features=features.shape[1], num_classes=num_classes, num_models=p.NUM_MODELS
    )
    if cfg.MODEL.WEIGHTS:
        state = safe_torch_load(cfg.MODEL.WEIGHTS)
        model.load_state_dict(state.get("model", state))
    model.to(cfg.MODEL.DEVICE)

    def build_train_loader():
        return PixelBatches(
            features,
            labels,
            num_models=p.NUM_MODELS,
            batch_pixels=p.BATCH_PIXELS,
            seed=seed + comm.get_rank(),
        )

    def evaluate(eval_model: nn.Module) -> dict[str, float]:
        results = {}
        for name in cfg.DATASETS.TEST:
            test_records, meta = get_sem_seg_dataset(name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
            evaluator = SemSegEvaluator(
                num_classes=num_classes,
                ignore_label=ignore,
                class_names=meta["classes"],
                palette=meta.get("palette"),
                output_dir=Path(cfg.OUTPUT_DIR) / "vis" / Path(name).name,
                num_visualizations=cfg.SEG.NUM_VIS,
            )
            pred_dir = Path(cfg.OUTPUT_DIR) / "predictions" / Path(name).name
            pred_dir.mkdir(parents=True, exist_ok=True)
            mine = list(test_records)[comm.get_rank() :: comm.get_world_size()]
            for record in mine:
                (image,), (mask,) = load_images([record], image_size=image_size)
                pred, unc = predict_image(
                    extractor,
                    eval_model,
                    image,
                    chunk_pixels=p.CHUNK_PIXELS,
                    uncertainty=p.UNCERTAINTY,
                )
                stem = Path(record["file_name"]).stem
                Image.fromarray(pred.numpy().astype(np.uint8), mode="L").save(
                    pred_dir / f"{stem}.png"
                )
                scale = 255.0 if p.UNCERTAINTY == "vote" else 255.0 / np.log(num_classes)
                unc_img = (unc.numpy() * scale).clip(0, 255).astype(np.uint8)
                Image.fromarray(unc_img, mode="L").save(pred_dir / f"{stem}_uncertainty.png")
                image_u8 = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                evaluator.process(pred, mask, image=image_u8, name=stem)
            evaluator.confusion = np.asarray(sum(comm.all_gather(evaluator.confusion)))
            out = evaluator.evaluate() if comm.is_main_process() else {}
            prefix = "" if len(cfg.DATASETS.TEST) == 1 else f"{name}/"
            results.update({prefix + k: v for k, v in out.items()})
        return results

    return Task(model=model, build_train_loader=build_train_loader, evaluate=evaluate)
