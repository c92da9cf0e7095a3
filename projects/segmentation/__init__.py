"""Segmentation projects: DDeP denoising pretraining (:mod:`projects.segmentation.ddep`) and
few-shot pixel MLPs on DDPM features (:mod:`projects.segmentation.pixel_mlp`), sharing the
segmentation data code (:mod:`projects.segmentation.data`, :mod:`projects.segmentation.config`).

Importing this package registers the ``DDeP`` and ``PixelMLP`` tasks.
"""

from projects.segmentation import ddep, pixel_mlp

__all__ = ["ddep", "pixel_mlp"]
