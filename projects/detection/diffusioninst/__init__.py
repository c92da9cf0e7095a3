"""DiffusionInst (Gu et al., arXiv:2212.02773): instance segmentation from denoised boxes.

Importing this package registers the ``DiffusionInst`` task (``MODEL.META_ARCHITECTURE``) and
its ``MODEL.DiffusionInst`` keys. Public API: :func:`build_model` and :class:`DiffusionInst`
(``model.predict(images, num_boxes=None, steps=None, init_boxes=None, seed=None)``, DiffusionDet's
signature, results with ``masks``).
"""

from projects.detection.diffusioninst.build import build_model
from projects.detection.diffusioninst.model import DiffusionInst
from projects.detection.diffusioninst.task import DIFFUSIONINST_TASK

__all__ = ["DIFFUSIONINST_TASK", "DiffusionInst", "build_model"]
