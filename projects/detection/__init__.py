"""DiffusionDet (Chen et al., ICCV 2023): object detection by denoising boxes.

Importing this package registers the ``DiffusionDet`` task (``MODEL.META_ARCHITECTURE``) and its
config keys. Public API: :func:`build_model`, :func:`load_weights`, :class:`DiffusionDet`
(``model.predict(images, num_boxes=None, steps=None, init_boxes=None, seed=None)``).
"""

from projects.detection.build import DIFFUSIONDET_TASK, build_model
from projects.detection.checkpoint import load_weights
from projects.detection.config import add_diffusiondet_config
from projects.detection.detector import DiffusionDet

__all__ = [
    "DIFFUSIONDET_TASK",
    "DiffusionDet",
    "add_diffusiondet_config",
    "build_model",
    "load_weights",
]
