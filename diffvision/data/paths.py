"""Where datasets live on disk.

diffvision resolves standard dataset names (``coco_2017_train``, ``lvis_v1_val``,
``cityscapes_fine_sem_seg_train``, ...) and writes its generated toy datasets under one root, chosen
like detectron2 does: ``$DIFFVISION_DATASETS``, else ``$DETECTRON2_DATASETS`` (so an existing
detectron2 set-up works unchanged), else ``./datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATASETS_ENV_VARS", "datasets_root"]

DATASETS_ENV_VARS = ("DIFFVISION_DATASETS", "DETECTRON2_DATASETS")


def datasets_root() -> Path:
    """Return the folder that holds all datasets (it need not exist yet).

    Returns:
        ``$DIFFVISION_DATASETS`` if set and non-empty, else ``$DETECTRON2_DATASETS``, else
        ``./datasets`` relative to the current working directory.
    """
    for var in DATASETS_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return Path(value).expanduser()
    return Path("datasets")
