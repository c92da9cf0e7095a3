"""Reading DDPM checkpoints written by the engine.

Engine checkpoints (``diffvision.engine.checkpoint``) hold ``{"model": state_dict, "ema":
state_dict (optional), "config": yaml str, ...}``; the state dicts are those of a
:class:`~diffvision.generation.model.DDPMModel`, i.e. UNet keys prefixed with ``unet.``. The EMA
weights are preferred when present (Ho et al. 2020 sample with the EMA model).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import yaml

from diffvision.config import CN, CfgNode
from diffvision.diffusion.schedule import NoiseSchedule
from diffvision.errors import WeightsError
from diffvision.generation.build import build_ddpm_model
from diffvision.generation.model import DDPMModel
from diffvision.modeling.unet import UNet
from diffvision.utils.safe_files import safe_torch_load

__all__ = ["load_ddpm_model", "load_ddpm_unet"]

logger = logging.getLogger(__name__)


def _read(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    # weights_only=True with NumPy admitted (engine checkpoints carry NumPy's RNG state)
    data = safe_torch_load(path, what="DDPM checkpoint")
    if not isinstance(data, dict) or "model" not in data or not data.get("config"):
        raise WeightsError(
            f"{path} is not a diffvision checkpoint with 'model' and 'config' (expected the "
            "model_final.pth of a tools/train_net.py DDPM run)"
        )
    return data


def _num_classes(state_dict: dict[str, torch.Tensor], cfg: CfgNode) -> int | None:
    if not cfg.MODEL.DDPM.CLASS_COND:
        return None
    rows = state_dict["unet.label_emb.weight"].shape[0]
    return rows - int(cfg.MODEL.DDPM.CLASS_DROPOUT_PROB > 0)  # minus the null class


def load_ddpm_model(
    path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[DDPMModel, CfgNode]:
    """Rebuild the :class:`DDPMModel` of an engine checkpoint from its stored config.

    Args:
        path: ``model_final.pth`` or any ``model_XXXXXXX.pth`` of a DDPM run.
        use_ema: load the ``"ema"`` weights when the checkpoint has them.
        device: where to put the model.

    Returns:
        ``(model in eval mode, cfg)`` where ``cfg`` is the run's config as saved.
    """
    data = _read(path)
    cfg = CN(yaml.safe_load(data["config"]))
    if cfg.MODEL.get("META_ARCHITECTURE") != "DDPM" or "DDPM" not in cfg.MODEL:
        raise WeightsError(
            f"{path} was trained with MODEL.META_ARCHITECTURE "
            f"{cfg.MODEL.get('META_ARCHITECTURE')!r}, not 'DDPM'"
        )
    state = data["ema"] if use_ema and "ema" in data else data["model"]
    logger.info("loading %s weights of %s", "EMA" if state is data.get("ema") else "raw", path)
    model = build_ddpm_model(cfg, num_classes=_num_classes(state, cfg))
    model.load_state_dict(state, strict=True)
    cfg.freeze()
    return model.to(device).eval(), cfg


def load_ddpm_unet(
    path: str | os.PathLike, *, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[UNet, NoiseSchedule, CfgNode]:
    """Load the UNet and noise schedule of a DDPM run (for feature extraction or sampling).

    Args:
        path: an engine checkpoint of a ``MODEL.META_ARCHITECTURE: DDPM`` run.
        use_ema: prefer the EMA weights (the ones used for sampling and evaluation).
        device: where to put the UNet.

    Returns:
        ``(unet in eval mode, schedule, cfg)``: the UNet is called as
        ``unet(x_t, schedule.timestep_map[t], y)``; ``cfg.MODEL.DDPM.PREDICTION_TYPE`` says
        what it predicts.
    """
    model, cfg = load_ddpm_model(path, use_ema=use_ema, device=device)
    return model.unet, model.schedule, cfg
