"""Generic semantic-segmentation folder format and the map-style dataset shared by sem-seg sources.

Folder format (one folder per split)::

    <root>/
      images/<stem>.{png,jpg,jpeg}   RGB images
      masks/<stem>.png               optional; single-channel class indices, 255 = ignore
      classes.json                   {"classes": ["background", "disk", ...],
                                      "palette": [[r, g, b], ...],       (optional)
                                      "ignore_label": 255}               (optional)

An image without a mask is *unlabeled* (``sem_seg_file_name`` is ``None``): it is still usable
for denoising pretraining. Records follow detectron2's sem-seg dicts:
``{"file_name", "sem_seg_file_name", "height", "width"}`` plus an optional ``"label_lut"``
(a 256-entry ``uint8`` table applied to the raw mask, used to convert Cityscapes ``labelIds``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffvision.data.image_io import open_image, read_image_rgb, readable_images
from diffvision.errors import DataError, InputFileNotFoundError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SemSegDataset",
    "load_seg_folder",
    "read_classes_json",
    "read_image",
    "read_mask",
    "write_classes_json",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def read_classes_json(path: str | Path) -> dict:
    """Read ``classes.json``.

    Returns:
        ``{"classes": list[str], "palette": list[list[int]] | None, "ignore_label": int}``.

    Raises:
        InputFileNotFoundError: the file does not exist.
        DataError: the file is not JSON or lacks a non-empty ``"classes"`` list.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(
            f"classes file not found: {path} (a folder dataset names its classes there: "
            '{"classes": ["background", ...], "ignore_label": 255})'
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{path} must hold a non-empty 'classes' list, got {meta!r:.200}")
    palette = meta.get("palette")
    if palette is not None and len(palette) < len(classes):
        raise DataError(f"{path}: palette has {len(palette)} entries for {len(classes)} classes")
    return {
        "classes": [str(c) for c in classes],
        "palette": palette,
        "ignore_label": int(meta.get("ignore_label", 255)),
    }


def write_classes_json(
    path: str | Path,
    *,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    ignore_label: int = 255,
) -> None:
    """Write ``classes.json`` in the format :func:`read_classes_json` reads."""
    meta: dict = {"classes": list(classes), "ignore_label": ignore_label}
    if palette is not None:
        meta["palette"] = [list(map(int, c)) for c in palette]
    Path(path).write_text(json.dumps(meta, indent=1))


def load_seg_folder(root: str | Path, *, require_masks: bool = False) -> list[dict]:
    """List the images of a folder-format split as sem-seg records, sorted by file name.

    Args:
        root: the split folder holding ``images/``, ``masks/`` and ``classes.json``.
        require_masks: raise if an image has no mask (labeled evaluation/fine-tuning).

    Returns:
        list of ``{"file_name", "sem_seg_file_name" (or None), "image_id"}``; images that
        cannot be read are dropped with a logged count.

    Raises:
        FileNotFoundError: ``root/images`` is missing or empty, or a mask is missing while
            ``require_masks``.
    """
    root = Path(root)
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise InputFileNotFoundError(f"no images/ folder in {root}")
    mask_dir = root / "masks"
    records = []
    candidates = [p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    for path in readable_images(candidates):
        mask_path = mask_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            if require_masks:
                raise InputFileNotFoundError(f"mask for {path.name} not found: {mask_path}")
            mask_path = None
        records.append(
            {
                "file_name": str(path),
                "sem_seg_file_name": str(mask_path) if mask_path else None,
                "image_id": path.stem,
            }
        )
    if not records:
        raise InputFileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    return records


def read_image(path: str | Path) -> torch.Tensor:
    """Read an RGB image as a ``uint8`` tensor ``(3, H, W)``.

    Raises:
        InputFileNotFoundError, DataError: missing, undecodable, zero-size or too large (the
            path is named; :func:`diffvision.data.image_io.read_image_rgb`).
    """
    array = read_image_rgb(path)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_mask(path: str | Path, *, label_lut: np.ndarray | None = None) -> torch.Tensor:
    """Read a single-channel class-index PNG as ``int64`` ``(H, W)``.

    Args:
        path: PNG path (mode ``L``/``P``/``I``).
        label_lut: optional ``(256,)`` uint8 table mapping raw values to class indices
            (e.g. Cityscapes ``labelId -> trainId``).

    Raises:
        InputFileNotFoundError, DataError: missing, undecodable or not single-channel.
    """
    with open_image(path, "mask") as img:
        array = np.asarray(img)
    if array.ndim != 2:
        raise DataError(f"mask {path} must be single-channel, got shape {array.shape}")
    if label_lut is not None:
        if array.min() < 0 or array.max() >= len(label_lut):
            raise DataError(
                f"mask {path} has values outside the lookup table [0, {len(label_lut)})"
            )
        array = label_lut[array]
    return torch.from_numpy(array.astype(np.int64))


class SemSegDataset(Dataset):
    """Map-style dataset over sem-seg records.

    Each item is ``{"image": uint8 (3, H, W), "sem_seg": int64 (H, W) or absent,
    "file_name": str, "height": int, "width": int}``; ``height``/``width`` are the original
    size before ``transform``.

    Args:
        records: dicts with ``file_name``, ``sem_seg_file_name`` (may be ``None``) and an
            optional ``label_lut``.
        transform: ``(image, mask) -> (image, mask)``, e.g.
            :class:`diffvision.data.seg_transforms.SegAugmentation`.
        num_classes: when given, a mask value ``>= num_classes`` other than ``ignore_label``
            raises :class:`~diffvision.errors.DataError` naming the mask file (instead of torch's
            "Target 7 is out of bounds" deep inside the loss).
        ignore_label: the value that marks unlabelled pixels.
    """

    def __init__(
        self,
        records: Sequence[dict],
        *,
        transform: Callable[[torch.Tensor, torch.Tensor | None], tuple] | None = None,
        num_classes: int | None = None,
        ignore_label: int = 255,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = read_image(record["file_name"])
        mask = None
        if record.get("sem_seg_file_name"):
            mask = read_mask(record["sem_seg_file_name"], label_lut=record.get("label_lut"))
            self._check_labels(mask, record["sem_seg_file_name"])
            if mask.shape != image.shape[-2:]:
                raise DataError(
                    f"mask {record['sem_seg_file_name']} is {tuple(mask.shape)}, "
                    f"image is {tuple(image.shape[-2:])}"
                )
        height, width = image.shape[-2:]
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        item = {"image": image, "file_name": record["file_name"], "height": height, "width": width}
        if mask is not None:
            item["sem_seg"] = mask
        return item

    def _check_labels(self, mask: torch.Tensor, path: str) -> None:
        if self.num_classes is None:
            return
        bad = mask[(mask >= self.num_classes) & (mask != self.ignore_label)]
        if bad.numel():
            values = sorted(int(v) for v in bad.unique()[:5])
            raise DataError(
                f"mask {path} holds labels {values} >= MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"{self.num_classes} (ignore label {self.ignore_label}); fix the mask or raise "
                "NUM_CLASSES"
            )
