"""Few-shot semantic segmentation with pixel MLPs on DDPM features (Baranchuk et al.,
arXiv:2112.03126). Importing this package registers the ``PixelMLP`` task."""

from .model import PixelBatches, PixelMLPEnsemble, make_pixel_mlp
from .task import PIXEL_MLP_TASK

__all__ = ["PIXEL_MLP_TASK", "PixelBatches", "PixelMLPEnsemble", "make_pixel_mlp"]
