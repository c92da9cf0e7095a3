"""Cityscapes semantic segmentation (19 training classes) in its standard layout.

Layout (``<root>`` = ``$DIFFVISION_DATASETS/cityscapes``)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (generated)
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (official)

Training uses trainIds 0..18 with 255 = ignore. ``*_labelTrainIds.png`` is used when present;
otherwise ``*_labelIds.png`` is converted on the fly through a 256-entry lookup table built from
the official label table in ``cityscapesscripts.helpers.labels``
(github.com/mcordts/cityscapesScripts, ``cityscapesscripts/helpers/labels.py``):
``lut[label.id] = label.trainId`` for every label with ``id >= 0`` and ``trainId`` not in
{255, -1}; everything else maps to 255.

Dataset names follow detectron2: ``cityscapes_fine_sem_seg_{train,val}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from diffvision.errors import ConfigError, InputFileNotFoundError

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_SEM_SEG_SPLITS",
    "cityscapes_label_to_train_id_lut",
    "get_cityscapes_sem_seg_records",
    "load_cityscapes_semantic",
]

logger = logging.getLogger(__name__)

#: dataset name -> (image dir, gt dir), relative to the datasets root.
CITYSCAPES_SEM_SEG_SPLITS = {
    "cityscapes_fine_sem_seg_train": ("cityscapes/leftImg8bit/train", "cityscapes/gtFine/train"),
    "cityscapes_fine_sem_seg_val": ("cityscapes/leftImg8bit/val", "cityscapes/gtFine/val"),
    "cityscapes_fine_sem_seg_test": ("cityscapes/leftImg8bit/test", "cityscapes/gtFine/test"),
}

IGNORE_LABEL = 255


def _train_labels() -> list:
    from cityscapesscripts.helpers.labels import labels

    train = [lab for lab in labels if lab.trainId not in (255, -1)]
    return sorted(train, key=lambda lab: lab.trainId)


#: The 19 evaluated class names in trainId order.
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _train_labels())
#: RGB colours in trainId order (the official palette).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(lab.color) for lab in _train_labels()
)


def cityscapes_label_to_train_id_lut() -> np.ndarray:
    """Lookup table ``labelId -> trainId`` from the official Cityscapes label table.

    Returns:
        ``(256,)`` uint8 array; unlisted and ignored ids map to 255.
    """
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for lab in labels:
        if lab.id >= 0 and lab.trainId not in (255, -1):
            lut[lab.id] = lab.trainId
    return lut


def load_cityscapes_semantic(image_dir: str | Path, gt_dir: str | Path) -> list[dict]:
    """Pair ``*_leftImg8bit.png`` images with their fine semantic labels.

    Args:
        image_dir: e.g. ``cityscapes/leftImg8bit/train``.
        gt_dir: e.g. ``cityscapes/gtFine/train``.

    Returns:
        records ``{"file_name", "sem_seg_file_name", "image_id", "label_lut"}``, sorted by
        image path; ``label_lut`` is ``None`` for ``labelTrainIds`` files and the
        ``labelId -> trainId`` table when the record falls back to ``labelIds``.

    Raises:
        FileNotFoundError: a folder is missing, holds no images, or an image has neither label
            file.
    """
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    for folder in (image_dir, gt_dir):
        if not folder.is_dir():
            raise InputFileNotFoundError(
                f"Cityscapes folder not found: {folder} (set DIFFVISION_DATASETS to the folder "
                "holding cityscapes/)"
            )
    lut = None
    records = []
    suffix = "_leftImg8bit.png"
    for image_path in sorted(image_dir.glob(f"*/*{suffix}")):
        stem = image_path.name[: -len(suffix)]
        city_gt = gt_dir / image_path.parent.name
        train_ids = city_gt / f"{stem}_gtFine_labelTrainIds.png"
        label_ids = city_gt / f"{stem}_gtFine_labelIds.png"
        if train_ids.is_file():
            record = {"sem_seg_file_name": str(train_ids), "label_lut": None}
        elif label_ids.is_file():
            if lut is None:
                lut = cityscapes_label_to_train_id_lut()
            record = {"sem_seg_file_name": str(label_ids), "label_lut": lut}
        else:
            raise InputFileNotFoundError(f"no labelTrainIds/labelIds file for {image_path}")
        record.update(file_name=str(image_path), image_id=stem)
        records.append(record)
    if not records:
        raise InputFileNotFoundError(f"no *{suffix} images under {image_dir}/<city>/")
    if lut is not None:
        logger.info("Converting Cityscapes labelIds to trainIds on the fly under %s", gt_dir)
    return records


def get_cityscapes_sem_seg_records(name: str, *, root: str | Path | None = None) -> list[dict]:
    """Records of a named Cityscapes split, e.g. ``cityscapes_fine_sem_seg_train``.

    Args:
        name: one of :data:`CITYSCAPES_SEM_SEG_SPLITS`.
        root: datasets root; default :func:`diffvision.data.paths.datasets_root`
            (``$DIFFVISION_DATASETS``).
    """
    if name not in CITYSCAPES_SEM_SEG_SPLITS:
        raise ConfigError(
            f"unknown Cityscapes split {name!r}; known: {sorted(CITYSCAPES_SEM_SEG_SPLITS)}"
        )
    if root is None:
        from diffvision.data.paths import datasets_root

        root = datasets_root()
    image_rel, gt_rel = CITYSCAPES_SEM_SEG_SPLITS[name]
    return load_cityscapes_semantic(Path(root) / image_rel, Path(root) / gt_rel)
