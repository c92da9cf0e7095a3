"""Builders of the DDeP task: the only code that reads the config for it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from diffvision.config import CfgNode
from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import SegAugmentation
from diffvision.diffusion.schedule import get_schedule
from diffvision.engine import comm
from diffvision.engine.tasks import Task, register_task
from diffvision.errors import ConfigError
from projects.segmentation.config import add_ddep_config
from projects.segmentation.data import get_sem_seg_dataset, infinite_loader, train_records
from projects.segmentation.ddep import DDeP, ResNetUNet, TimmUNet, describe
from projects.segmentation.inference import evaluate_denoising, evaluate_sem_seg

__all__ = ["build_ddep_model", "build_ddep_task", "load_encoder_weights", "load_model_weights"]

logger = logging.getLogger(__name__)

_TORCHVISION_TO_BACKBONE = {
    "conv1.": "stem.0.",
    "bn1.": "stem.1.",
    "layer1.": "layer1.1.",
    "layer2.": "layer2.",
    "layer3.": "layer3.",
    "layer4.": "layer4.",
}


def _read_state_dict(path_or_url: str) -> dict[str, torch.Tensor]:
    if "://" in path_or_url:
        data = torch.hub.load_state_dict_from_url(path_or_url, map_location="cpu")
    else:
        if not Path(path_or_url).is_file():
            raise FileNotFoundError(f"weights file not found: {path_or_url}")
        data = torch.load(path_or_url, map_location="cpu", weights_only=False)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]  # a diffvision / detectron2 checkpoint
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return data


def load_encoder_weights(network: ResNetUNet, path_or_url: str) -> None:
    """Load a torchvision ImageNet ResNet state dict into the encoder (``fc`` is dropped).

    Raises:
        ValueError: no encoder tensor matched, or an encoder tensor is missing.
    """
    state = _read_state_dict(path_or_url)
    mapped = {}
    for key, value in state.items():
        for src, dst in _TORCHVISION_TO_BACKBONE.items():
            if key.startswith(src) and dst.split(".")[0] in network.backbone:
                mapped[dst + key[len(src) :]] = value
                break
    if not mapped:
        raise ValueError(f"{path_or_url} holds no torchvision ResNet encoder weights")
    missing, unexpected = network.backbone.load_state_dict(mapped, strict=False)
    if missing:
        raise ValueError(
            f"encoder weights {path_or_url} lack {len(missing)} tensors, e.g. {missing[:3]}"
        )
    logger.info("Loaded ImageNet encoder weights from %s (%d tensors)", path_or_url, len(mapped))


def load_model_weights(model: nn.Module, path_or_url: str) -> None:
    """Initialise from ``MODEL.WEIGHTS``, skipping tensors whose shape differs (the 3-channel
    denoising head when fine-tuning for ``C`` classes)."""
    state = _read_state_dict(path_or_url)
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    missing, unexpected = model.load_state_dict(kept, strict=False)
    logger.info(
        "Loaded %d tensors from %s; shape-mismatched (re-initialised): %s; missing: %d; "
        "unexpected: %d",
        len(kept),
        path_or_url,
        skipped or "none",
        len(missing),
        len(unexpected),
    )
    if not kept:
        raise ValueError(f"no tensor of {path_or_url} matches the model")


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
    """The DDeP model of ``cfg`` on ``MODEL.DEVICE``, with encoder / model weights loaded."""
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
        load_encoder_weights(network, d.ENCODER_WEIGHTS)
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
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS)
    logger.info("%s", describe(model))
    return model.to(cfg.MODEL.DEVICE)


def _train_dataset(cfg: CfgNode, *, labeled: bool) -> SemSegDataset:
    records = train_records(cfg, labeled=labeled)
    base = tuple(cfg.SEG.BASE_SIZE)
    augment = SegAugmentation(
        crop_size=tuple(cfg.SEG.CROP_SIZE),
        scale_range=tuple(cfg.SEG.SCALE_RANGE),
        base_size=base if all(base) else None,
        flip_prob=cfg.SEG.FLIP_PROB,
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
    return SemSegDataset(records, transform=augment)


@register_task("DDeP", add_config=add_ddep_config)
def build_ddep_task(cfg: CfgNode) -> Task:
    """DDeP pretraining (``MODEL.DDEP.MODE: denoise``) or fine-tuning (``segment``)."""
    model = build_ddep_model(cfg)
    denoise = cfg.MODEL.DDEP.MODE == "denoise"
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()

    def build_train_loader():
        # Pretraining uses every image, labeled or not; fine-tuning the labeled subset.
        dataset = _train_dataset(cfg, labeled=not denoise)
        world = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} not divisible by {world} ranks"
            )
        return infinite_loader(
            dataset,
            batch_size=cfg.SOLVER.IMS_PER_BATCH // world,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            seed=seed,
            rank=comm.get_rank(),
            world_size=world,
        )

    def evaluate(eval_model: nn.Module) -> dict[str, float]:
        results = {}
        for name in cfg.DATASETS.TEST:
            records, meta = get_sem_seg_dataset(name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
            if denoise:
                out = evaluate_denoising(eval_model, records)
            else:
                out = evaluate_sem_seg(
                    lambda x: eval_model.segment_logits(x),
                    records,
                    num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                    class_names=meta["classes"],
                    palette=meta.get("palette"),
                    ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    mode=cfg.SEG.TEST_MODE,
                    resize=tuple(cfg.SEG.TEST_RESIZE),
                    window=tuple(cfg.SEG.TEST_WINDOW),
                    stride=tuple(cfg.SEG.TEST_STRIDE),
                    vis_dir=Path(cfg.OUTPUT_DIR) / "vis" / Path(name).name,
                    num_vis=cfg.SEG.NUM_VIS,
                    device=eval_model.device,
                )
            prefix = "" if len(cfg.DATASETS.TEST) == 1 else f"{name}/"
            results.update({prefix + k: v for k, v in out.items()})
        return results

    return Task(model=model, build_train_loader=build_train_loader, evaluate=evaluate)
