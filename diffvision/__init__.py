"""diffvision: diffusion models for downstream vision (detection, segmentation, generation)."""

__version__ = "0.1.0"
