"""Loading DiffusionDet weights: the engine's one loader, re-exported where it always lived.

:func:`load_weights` (:mod:`diffvision.engine.weights`) places by content an official DiffusionDet
/ detectron2 / diffvision checkpoint into the whole model, and a backbone-only ImageNet file
(detectron2 ``R-50.pkl``, torchvision ResNet ``.pth``, Swin) into ``backbone.bottom_up``; the
model declares ``criterion.fed_loss_cls_weights`` (LVIS only) optional.
"""

from __future__ import annotations

from diffvision.engine.weights import load_weights

__all__ = ["load_weights"]
