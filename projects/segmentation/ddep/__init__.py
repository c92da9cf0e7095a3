"""DDeP (Brempong et al., arXiv:2205.11423): denoising pretraining of a UNet decoder, then
semantic-segmentation fine-tuning. Importing this package registers the ``DDeP`` task."""

from .build import build_ddep_model
from .model import DDeP, EncoderUNet
from .task import DDEP_TASK

__all__ = ["DDEP_TASK", "DDeP", "EncoderUNet", "build_ddep_model"]
