"""DiffusionDet (Chen et al., ICCV 2023, arXiv:2211.09788): object detection by denoising boxes.

Importing this package registers the ``DiffusionDet`` task (``MODEL.META_ARCHITECTURE``) and its
config keys. Public API: :func:`build_model`, :func:`load_weights`, :class:`DiffusionDet`
(``model.predict(images, num_boxes=None, steps=None, init_boxes=None, seed=None)``).
"""

from diffvision.engine.weights import load_weights
from projects.detection.build import build_model
from projects.detection.config import add_diffusiondet_config
from projects.detection.detector import DiffusionDet
from projects.detection.task import DIFFUSIONDET_TASK

__all__ = [
    "DIFFUSIONDET_TASK",
    "DiffusionDet",
    "add_diffusiondet_config",
    "build_model",
    "load_weights",
]
