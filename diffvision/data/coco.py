"""Load COCO-format (COCO, LVIS v1, custom) detection annotations into dataset dicts.

The dicts follow detectron2's layout (what its ``load_coco_json``/``load_lvis_json`` give), one
per image::

    {"file_name": str, "height": int, "width": int, "image_id": int,
     "annotations": [{"bbox": [x1, y1, x2, y2] (absolute pixels, float),
                      "category_id": int (contiguous, 0..K-1), "iscrowd": 0 | 1}, ...]}

Contiguous class ids follow the category ids in increasing order (COCO 1..90 -> 0..79, LVIS v1
1..1203 -> 0..1202, reference ``diffusiondet.md`` §4.5). LVIS images carry no ``file_name``: it is
built from ``coco_url`` (``.../train2017/000000391895.jpg`` -> ``train2017/000000391895.jpg``)
relative to the COCO image root.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DetectionMetadata", "load_coco_json"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionMetadata:
    """Class information of a detection dataset.

    Attributes:
        thing_classes: class names in contiguous-id order.
        thing_dataset_id_to_contiguous_id: json category id -> contiguous id.
        class_image_count: LVIS ``image_count`` per contiguous class, or ``None``.
        class_frequency: LVIS frequency group (``"r"``, ``"c"``, ``"f"``) per class, or ``None``.
    """

    thing_classes: list[str]
    thing_dataset_id_to_contiguous_id: dict[int, int]
    class_image_count: list[int] | None = None
    class_frequency: list[str] | None = field(default=None)


def _image_file_name(image: dict[str, Any], image_root: Path) -> Path:
    if "file_name" in image:
        return image_root / image["file_name"]
    if "coco_url" in image:  # LVIS v1
        split_folder, name = image["coco_url"].split("/")[-2:]
        return image_root / split_folder / name
    raise ValueError(f"image {image.get('id')} has neither 'file_name' nor 'coco_url'")


def load_coco_json(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    dataset_name: str | None = None,
    env_hint: str | None = None,
) -> tuple[list[dict[str, Any]], DetectionMetadata]:
    """Read a COCO- or LVIS-format instances json.

    Boxes with non-positive width or height are skipped (one warning with their count).
    Segmentations and keypoints are not loaded.

    Args:
        json_file: the annotation file.
        image_root: folder the image ``file_name`` (or LVIS ``coco_url`` tail) is relative to.
        dataset_name: used in messages.
        env_hint: appended to "not found" errors (e.g. which environment variable to set).

    Returns:
        ``(dataset_dicts, metadata)``; dataset dicts are in the json's image order.

    Raises:
        FileNotFoundError: the json or the image root does not exist.
        ValueError: the json has no ``images`` / ``categories``, or annotations are malformed.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    what = f"dataset '{dataset_name}'" if dataset_name else "dataset"
    hint = f" {env_hint}" if env_hint else ""
    if not json_file.is_file():
        raise FileNotFoundError(f"{what}: annotation file not found: {json_file}.{hint}")
    if not image_root.is_dir():
        raise FileNotFoundError(f"{what}: image folder not found: {image_root}.{hint}")
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: {json_file} is not valid json: {e}") from e
    if not isinstance(data, dict) or not data.get("images") or not data.get("categories"):
        raise ValueError(
            f"{what}: {json_file} has no images or no categories; expected a COCO-format "
            "instances file with 'images', 'annotations' and 'categories'"
        )

    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    metadata = DetectionMetadata(
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id=id_map,
        class_image_count=(
            [c["image_count"] for c in categories]
            if all("image_count" in c for c in categories)
            else None
        ),
        class_frequency=(
            [c["frequency"] for c in categories]
            if all("frequency" in c for c in categories)
            else None
        ),
    )

    anns_per_image: dict[int, list[dict[str, Any]]] = {}
    num_degenerate = 0
    for ann in data.get("annotations", []):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            category = id_map[ann["category_id"]]
            image_id = ann["image_id"]
        except KeyError as e:
            raise ValueError(
                f"{what}: annotation {ann.get('id')} in {json_file} has a missing or unknown {e}"
            ) from e
        if not (w > 0 and h > 0):
            num_degenerate += 1
            continue
        anns_per_image.setdefault(image_id, []).append(
            {
                "bbox": [x, y, x + w, y + h],
                "category_id": category,
                "iscrowd": ann.get("iscrowd", 0),
            }
        )
    if num_degenerate:
        logger.warning(
            "%s: skipped %d annotations with non-positive width or height in %s",
            what,
            num_degenerate,
            json_file,
        )

    dataset_dicts = [
        {
            "file_name": str(_image_file_name(image, image_root)),
            "height": image["height"],
            "width": image["width"],
            "image_id": image["id"],
            "annotations": anns_per_image.get(image["id"], []),
        }
        for image in data["images"]
    ]
    num_instances = sum(len(d["annotations"]) for d in dataset_dicts)
    logger.info(
        "Loaded %d images, %d instances, %d classes from %s",
        len(dataset_dicts),
        num_instances,
        len(categories),
        json_file,
    )
    return dataset_dicts, metadata
