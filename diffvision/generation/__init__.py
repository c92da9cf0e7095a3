"""The base image DDPM task (``MODEL.META_ARCHITECTURE: DDPM``): model, sampling, checkpoints.

Importing this package registers the task and its config keys (``MODEL.DDPM``).
"""

from __future__ import annotations

from diffvision.generation.build import build_ddpm_model, build_unet
from diffvision.generation.checkpoint import load_ddpm_model, load_ddpm_unet
from diffvision.generation.config import add_ddpm_config
from diffvision.generation.model import DDPMModel
from diffvision.generation.sampling import generate
from diffvision.generation.task import DDPM_TASK

__all__ = [
    "DDPMModel",
    "DDPM_TASK",
    "add_ddpm_config",
    "build_ddpm_model",
    "build_unet",
    "generate",
    "load_ddpm_model",
    "load_ddpm_unet",
]
