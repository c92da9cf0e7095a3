"""Segmentation project: DDeP denoising pretraining and few-shot pixel MLPs on DDPM features.

Importing this package registers the ``DDeP`` and ``PixelMLP`` tasks with
:mod:`diffvision.engine.tasks`.
"""

from projects.segmentation import build as _build  # noqa: F401  (registers "DDeP")
from projects.segmentation import build_pixel_mlp as _build_pixel_mlp  # noqa: F401  ("PixelMLP")
