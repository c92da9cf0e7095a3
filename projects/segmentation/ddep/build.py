"""Config -> DDeP model: the model builder of the DDeP task (the only model-side code that reads
the config for it).

- :func:`build_ddep_model`: :class:`~projects.segmentation.ddep.model.DDeP` on ``MODEL.DEVICE``
  (``MODEL.DDEP.NORM: SyncBN`` synchronises BN over processes; ``ENCODER_WEIGHTS`` initialises
  the encoder through the engine's :func:`~diffvision.engine.weights.load_weights`);
- :func:`build_inference`: denoising (fixed noise per image) or whole / sliding-window
  segmentation (:func:`predict_sem_seg`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffvision.config import CfgNode
from diffvision.data.seg_transforms import to_unit_range
from diffvision.diffusion.schedule import get_schedule
from diffvision.engine.build import build_seed
from diffvision.engine.sync_bn import convert_sync_batchnorm
from diffvision.engine.weights import load_weights, register_weight_converter
from diffvision.errors import ConfigError
from diffvision.evaluation.sem_seg import sliding_window_inference, whole_image_inference
from diffvision.modeling.backbones import build_backbone
from diffvision.utils.seeding import eval_image_seed

from .model import DDeP, EncoderUNet, describe

__all__ = [
    "build_ddep_model",
    "build_encoder",
    "build_inference",
    "predict_sem_seg",
    "torchvision_to_ddep_encoder",
]

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


_TORCHVISION_ENCODERS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def build_encoder(cfg: CfgNode) -> nn.Module:
    """The UNet encoder of ``MODEL.DDEP.ENCODER``, from the backbone registry:

    - ``resnet18/34/50/101``: torchvision's ResNet (``torchvision_resnet``), maps at strides 2 ..
      32 (2 .. 16 with a Transformer bottleneck, which then takes the place of ``layer4``);
    - ``timm:<name>``: that timm model (``timm``; weights ``MODEL.TIMM.PRETRAINED``, freezing
      ``MODEL.BACKBONE.FREEZE_AT``, norm ``MODEL.TIMM.NORM``), its five maps (four with the
      Transformer);
    - any other registered backbone name, every level it has.
    """
    d = cfg.MODEL.DDEP
    deepest = 5 if d.TRANSFORMER_LAYERS == 0 else 4  # maps at strides 2 .. 2**deepest
    what = "MODEL.DDEP.ENCODER"
    if d.ENCODER in _TORCHVISION_ENCODERS:
        levels = ("stem", "layer1", "layer2", "layer3", "layer4")[:deepest]
        depth = _TORCHVISION_ENCODERS[d.ENCODER]
        return build_backbone(
            cfg, "torchvision_resnet", out_features=levels, depth=depth, what=what
        )
    if d.ENCODER.startswith("timm:"):
        if d.ENCODER_WEIGHTS:
            raise ConfigError(
                f"MODEL.DDEP.ENCODER {d.ENCODER!r}: set the weights with MODEL.TIMM.PRETRAINED "
                "(MODEL.DDEP.ENCODER_WEIGHTS is for torchvision ResNets)"
            )
        name = d.ENCODER.removeprefix("timm:")
        return build_backbone(cfg, "timm", name=name, out_indices=range(deepest), what=what)
    return build_backbone(cfg, d.ENCODER, what=what)


def build_ddep_model(cfg: CfgNode) -> DDeP:
    """The DDeP model of ``cfg`` on ``MODEL.DEVICE`` (encoder initialised from
    ``MODEL.DDEP.ENCODER_WEIGHTS`` when set; ``MODEL.WEIGHTS`` is the engine's)."""
    d = cfg.MODEL.DDEP
    mode = d.MODE
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if d.TRANSFORMER_LAYERS and d.TRANSFORMER_DIM % d.TRANSFORMER_HEADS:
        raise ConfigError(
            f"MODEL.DDEP.TRANSFORMER_DIM ({d.TRANSFORMER_DIM}) must be divisible by "
            f"TRANSFORMER_HEADS ({d.TRANSFORMER_HEADS})"
        )
    network = EncoderUNet(
        encoder=build_encoder(cfg),
        out_channels=3 if mode == "denoise" else num_classes,
        decoder_channels=tuple(d.DECODER_CHANNELS),
        transformer_layers=d.TRANSFORMER_LAYERS,
        transformer_dim=d.TRANSFORMER_DIM,
        transformer_heads=d.TRANSFORMER_HEADS,
        encoder_name=d.ENCODER,
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


def build_inference(cfg: CfgNode):
    """The evaluation call: denoising with fixed noise per test image (the ``EVAL_IMAGE`` seed
    of its file name, so evaluations compare like with like), or whole-image / sliding-window
    segmentation (``SEG.TEST_*``)."""
    if cfg.MODEL.DDEP.MODE == "denoise":
        seed = build_seed(cfg)

        def denoise(model: DDeP, inputs: list[dict]) -> list[dict]:
            images = torch.stack([x["image"] for x in inputs])
            seeds = torch.tensor([eval_image_seed(seed, Path(x["file_name"]).name) for x in inputs])
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
                    scale=cfg.SEG.TEST_SCALE,
                    window=tuple(cfg.SEG.TEST_WINDOW),
                    stride=tuple(cfg.SEG.TEST_STRIDE),
                    device=model.device,
                )
            }
            for x in inputs
        ]

    return segment


@torch.no_grad()
def predict_sem_seg(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    label_size: tuple[int, int],
    num_classes: int,
    mode: str = "whole",
    resize: tuple[int, int] = (0, 0),
    scale: float = 1.0,
    window: tuple[int, int] = (512, 1024),
    stride: tuple[int, int] = (341, 683),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Class indices ``(h, w)`` (``label_size``) of one ``(3, H, W)`` uint8 image.

    Args:
        logits_fn: ``x (1, 3, h, w) in [-1, 1] -> logits (1, C, h, w)``.
        mode: ``"whole"`` or ``"slide"``.
        resize: ``(h, w)`` test-input size, ``(0, 0)`` = original; logits are resized back to
            ``label_size`` before the argmax.
        scale: without ``resize``, the test input is resized by this factor (rounded to whole
            pixels); 1 = original.
        window, stride: sliding-window geometry in pixels (of the resized input).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"test mode must be 'whole' or 'slide', got {mode!r}")
    x = to_unit_range(image)[None].to(device)
    if all(resize):
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
    elif scale != 1.0:
        size = tuple(max(1, round(side * scale)) for side in x.shape[-2:])
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if mode == "whole":
        logits = whole_image_inference(logits_fn, x)
    else:
        logits = sliding_window_inference(
            logits_fn, x, window=window, stride=stride, num_classes=num_classes
        )
    if tuple(logits.shape[-2:]) != tuple(label_size):
        logits = F.interpolate(logits, size=tuple(label_size), mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu()
