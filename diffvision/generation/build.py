"""Config -> DDPM model: the model builder of the DDPM task (the only place in
:mod:`diffvision.generation` that reads the model keys).

- :func:`build_unet`, :func:`build_ddpm_model`: the UNet and the :class:`DDPMModel` of
  ``MODEL.DDPM``;
- :func:`build_model`: the task's model on ``MODEL.DEVICE`` (class count from the training data);
- :func:`build_inference`: runs a sampling request through
  :func:`~diffvision.generation.sampling.generate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import ConcatDataset

from diffvision.config import CfgNode
from diffvision.diffusion.schedule import NoiseSchedule, get_schedule
from diffvision.errors import ConfigError
from diffvision.generation.config import LOSS_WEIGHTINGS
from diffvision.generation.data import build_ddpm_dataset, dataset_num_classes
from diffvision.generation.model import DDPMModel
from diffvision.generation.sampling import SAMPLERS, generate
from diffvision.modeling.unet import UNet
from diffvision.utils.seeding import seeded_generator

__all__ = ["build_ddpm_model", "build_inference", "build_model", "build_schedule", "build_unet"]


def build_schedule(cfg: CfgNode) -> NoiseSchedule:
    """The training noise schedule ``MODEL.DDPM.NOISE_SCHEDULE`` with ``NUM_TIMESTEPS`` steps."""
    return get_schedule(cfg.MODEL.DDPM.NOISE_SCHEDULE, cfg.MODEL.DDPM.NUM_TIMESTEPS)


def build_unet(cfg: CfgNode, *, num_classes: int | None) -> UNet:
    """Build the UNet of ``MODEL.DDPM``.

    Args:
        cfg: the config.
        num_classes: number of classes when ``MODEL.DDPM.CLASS_COND`` (from the dataset or a
            checkpoint); ignored otherwise.
    """
    d = cfg.MODEL.DDPM
    u = d.UNET
    if cfg.INPUT.IMAGE_SIZE <= 0:
        raise ConfigError(f"INPUT.IMAGE_SIZE must be > 0 for DDPM, got {cfg.INPUT.IMAGE_SIZE}")
    if d.CLASS_COND and not num_classes:
        raise ConfigError("MODEL.DDPM.CLASS_COND needs num_classes > 0")
    return UNet(
        image_size=cfg.INPUT.IMAGE_SIZE,
        in_channels=3,
        model_channels=u.MODEL_CHANNELS,
        num_res_blocks=u.NUM_RES_BLOCKS,
        attention_resolutions=tuple(u.ATTENTION_RESOLUTIONS),
        dropout=u.DROPOUT,
        channel_mult=tuple(u.CHANNEL_MULT),
        learn_sigma=d.LEARN_SIGMA,
        num_classes=num_classes if d.CLASS_COND else None,
        null_class=d.CLASS_COND and d.CLASS_DROPOUT_PROB > 0,
        num_heads=u.NUM_HEADS,
        num_head_channels=u.NUM_HEAD_CHANNELS,
        num_heads_upsample=u.NUM_HEADS_UPSAMPLE,
        use_scale_shift_norm=u.USE_SCALE_SHIFT_NORM,
        resblock_updown=u.RESBLOCK_UPDOWN,
        use_new_attention_order=u.USE_NEW_ATTENTION_ORDER,
        use_fp16=u.USE_FP16,
    )


def build_ddpm_model(cfg: CfgNode, *, num_classes: int | None = None) -> DDPMModel:
    """Build the :class:`DDPMModel` (UNet + schedule + loss options) of ``MODEL.DDPM``."""
    d = cfg.MODEL.DDPM
    if d.LOSS_WEIGHTING not in LOSS_WEIGHTINGS:
        raise ConfigError(
            f"MODEL.DDPM.LOSS_WEIGHTING must be one of {LOSS_WEIGHTINGS}, got {d.LOSS_WEIGHTING!r}"
        )
    if d.SAMPLER.NAME not in SAMPLERS:  # checked here: sampling first runs at evaluation
        raise ConfigError(
            f"MODEL.DDPM.SAMPLER.NAME must be one of {list(SAMPLERS)}, got {d.SAMPLER.NAME!r}"
        )
    return DDPMModel(
        unet=build_unet(cfg, num_classes=num_classes),
        schedule=build_schedule(cfg),
        prediction_type=d.PREDICTION_TYPE,
        min_snr_gamma=d.MIN_SNR_GAMMA if d.LOSS_WEIGHTING == "min_snr" else None,
        vlb_weight=d.VLB_WEIGHT,
        class_dropout_prob=d.CLASS_DROPOUT_PROB if d.CLASS_COND else 0.0,
    )


def build_model(cfg: CfgNode) -> DDPMModel:
    """The DDPMModel of ``MODEL.DDPM`` on ``MODEL.DEVICE`` (class count from the training data
    when ``CLASS_COND``)."""
    num_classes = None
    if cfg.MODEL.DDPM.CLASS_COND:
        datasets = [
            build_ddpm_dataset(n, image_size=cfg.INPUT.IMAGE_SIZE) for n in cfg.DATASETS.TRAIN
        ]
        num_classes = dataset_num_classes(
            datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        )
    return build_ddpm_model(cfg, num_classes=num_classes).to(cfg.MODEL.DEVICE)


def build_inference(cfg: CfgNode):
    s = cfg.MODEL.DDPM.SAMPLER
    sampler_kwargs = dict(
        sampler=s.NAME,
        num_steps=s.NUM_STEPS,
        eta=s.ETA,
        order=s.ORDER,
        guidance_scale=s.GUIDANCE_SCALE,
        clip_denoised=s.CLIP_DENOISED,
    )

    def run(model: DDPMModel, request: dict[str, Any]) -> torch.Tensor:
        """Images ``(num, 3, S, S)`` in [-1, 1] for one request."""
        g = seeded_generator(request["seed"])
        k, n = model.unet.num_classes, request["num"]
        labels = None
        if k is not None:
            labels = torch.arange(n) % k if request["kind"] == "grid" else None
            if labels is None:
                labels = torch.randint(0, k, (n,), generator=g)
        return generate(model, num_samples=n, labels=labels, generator=g, **sampler_kwargs)

    return run
