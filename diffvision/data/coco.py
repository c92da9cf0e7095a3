"""Load COCO-format (COCO, LVIS v1, custom) detection annotations into dataset dicts.

The dicts follow detectron2's layout (what its ``load_coco_json``/``load_lvis_json`` give), one
per image::

    {"file_name": str, "height": int, "width": int, "image_id": int,
     "annotations": [{"bbox": [x1, y1, x2, y2] (absolute pixels, float),
                      "category_id": int (contiguous, 0..K-1), "iscrowd": 0 | 1}, ...]}

Contiguous class ids follow the category ids in increasing order (COCO 1..90 -> 0..79, LVIS v1
1..1203 -> 0..1202, as detectron2's dataset registration does). LVIS images carry no
``file_name``: it is built from ``coco_url`` (``.../train2017/000000391895.jpg`` ->
``train2017/000000391895.jpg``) relative to the COCO image root.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffvision.data.image_io import image_size
from diffvision.errors import DataError, InputFileNotFoundError

__all__ = [
    "IMAGE_CHECK_LIMIT",
    "DetectionMetadata",
    "decode_segmentation",
    "load_coco_json",
    "rle_counts",
]

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


def _image_file_name(image: dict[str, Any], image_root: Path, json_file: Path) -> Path:
    """detectron2's rule: ``file_name`` under the root, else LVIS v1's ``coco_url`` tail
    (``.../train2017/000000391895.jpg`` -> ``<root>/train2017/000000391895.jpg``)."""
    if image.get("file_name"):
        return image_root / image["file_name"]
    if image.get("coco_url"):  # LVIS v1
        split_folder, name = str(image["coco_url"]).split("/")[-2:]
        return image_root / split_folder / name
    raise DataError(f"{json_file}: image {image.get('id')} has neither 'file_name' nor 'coco_url'")


# Image headers are read at load time (existence, size vs the json) for datasets up to this
# many images; larger ones are checked image by image when the loader reads them.
IMAGE_CHECK_LIMIT = 5000


@dataclass
class _Report:
    """What loading dropped or fixed, counted, with a few examples each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples.setdefault(kind, [])) < 3:
            self.examples[kind].append(example)

    def log(self, what: str, json_file: Path, dicts: list[dict], num_classes: int, *,
            images_checked: bool) -> None:  # fmt: skip
        num_instances = sum(len(d["annotations"]) for d in dicts)
        logger.info(
            "Loaded %d images, %d instances, %d classes from %s%s",
            len(dicts),
            num_instances,
            num_classes,
            json_file,
            "" if images_checked else " (image files are checked when read)",
        )
        if self.counts:
            parts = [
                f"{n} {kind} (e.g. {'; '.join(self.examples[kind])})"
                for kind, n in sorted(self.counts.items())
            ]
            logger.warning("%s: %s: %s", what, json_file, ", ".join(parts))


def _bbox_xywh(ann: dict[str, Any], json_file: Path) -> tuple[float, float, float, float]:
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(
            f"{json_file}: annotation {ann.get('id')} has bbox {bbox!r}; expected [x, y, w, h]"
        ) from None
    return x, y, w, h


def _image_records(data: dict, json_file: Path) -> dict[Any, dict[str, Any]]:
    """``images`` by id, each with a positive integer width and height."""
    images: dict[Any, dict[str, Any]] = {}
    for image in data["images"]:
        image_id = image.get("id") if isinstance(image, dict) else None
        if image_id is None:
            raise DataError(f"{json_file}: an image record has no 'id': {str(image)[:120]}")
        if image_id in images:
            raise DataError(f"{json_file}: image id {image_id} appears twice in 'images'")
        try:
            width, height = int(image["width"]), int(image["height"])
        except (KeyError, TypeError, ValueError):
            width = height = 0
        if width <= 0 or height <= 0:
            raise DataError(
                f"{json_file}: image {image_id} has width {image.get('width')!r} and height "
                f"{image.get('height')!r}; expected positive integers"
            )
        images[image_id] = image
    return images


def _checked_segmentation(
    ann: dict[str, Any], width: int, height: int, json_file: Path, report: _Report
) -> list[list[float]] | dict[str, Any] | None:
    """An annotation's ``segmentation`` in a form :func:`decode_segmentation` takes, or None
    when it has no usable mask (counted in ``report``: the box still trains detection).

    Polygons with fewer than 3 points are dropped (counted); polygons reaching outside the image
    are kept and clipped when rasterised (counted). An RLE must have the image's size.

    Raises:
        DataError: an RLE of another size than its image (in its ``size`` or in its run
            lengths), or a segmentation that is neither a list of polygons nor an RLE dict.
    """
    ann_id = ann.get("id")
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        size = segm.get("size")
        if "counts" not in segm or not isinstance(size, (list, tuple)) or len(size) != 2:
            raise DataError(
                f"{json_file}: annotation {ann_id} has an RLE segmentation without 'counts' and "
                "a 2-element 'size'"
            )
        if [int(size[0]), int(size[1])] != [height, width]:
            raise DataError(
                f"{json_file}: annotation {ann_id} has an RLE of size {list(size)} (h, w) but its "
                f"image is {[height, width]}"
            )
        counts = rle_counts(segm["counts"])
        if counts is None or min(counts, default=0) < 0 or sum(counts) != height * width:
            covered = "unreadable counts" if counts is None else f"counts covering {sum(counts)}"
            raise DataError(
                f"{json_file}: annotation {ann_id} has an RLE of size {list(size)} with "
                f"{covered} pixels; expected non-negative run lengths adding up to "
                f"{height} x {width} = {height * width}"
            )
        return segm
    if not isinstance(segm, list) or not segm:
        report.add("annotations without a segmentation (no mask loss)", f"{ann_id}")
        return None
    polygons = []
    for poly in segm:
        if not isinstance(poly, (list, tuple)) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in poly
        ):
            raise DataError(
                f"{json_file}: annotation {ann_id} has segmentation {str(segm)[:80]}; expected a "
                "list of polygons [x1, y1, x2, y2, ...] or an RLE dict"
            )
        if len(poly) < 6 or len(poly) % 2:
            report.add("polygons with fewer than 3 points dropped", f"{ann_id}")
            continue
        polygons.append([float(v) for v in poly])
    if not polygons:
        report.add("annotations without a segmentation (no mask loss)", f"{ann_id}")
        return None
    xs = [v for poly in polygons for v in poly[0::2]]
    ys = [v for poly in polygons for v in poly[1::2]]
    if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
        report.add("segmentations clipped to their image", f"{ann_id}")
    return polygons


def rle_counts(counts: list | str | bytes) -> list[int] | None:
    """The run lengths of an RLE's ``counts``: an uncompressed list as it is, a compressed
    string decoded (COCO's format, ``rleFrString`` of the cocoapi's ``maskApi.c``: 5 bits per
    character from ``'0'`` on, 0x20 = more characters follow, 0x10 = negative on the last
    character, each count after the second stored as the difference to the one two before).
    None for something that is neither, or a string that ends mid-number."""
    if isinstance(counts, list):
        ok = all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
        return counts if ok else None
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if not isinstance(counts, bytes):
        return None
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if p == len(counts):
                return None
            c = counts[p] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def decode_segmentation(segm: list | dict | None, height: int, width: int):
    """A checked segmentation (polygons or RLE) -> (height, width) uint8 {0, 1} mask, or None.

    Polygons are rasterised by pycocotools (parts outside the image are cut off)."""
    if segm is None:
        return None
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle)


def _build_records(
    data: dict,
    id_map: dict[int, int],
    image_root: Path,
    json_file: Path,
    *,
    masks: bool = False,
) -> tuple[list[dict[str, Any]], _Report]:
    """Dataset dicts with every annotation checked against its image (see load_coco_json)."""
    report = _Report()
    images = _image_records(data, json_file)
    anns_per_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data.get("annotations") or []:
        ann_id = ann.get("id")
        image = images.get(ann.get("image_id"))
        if image is None:
            report.add("annotations of unknown images", f"{ann_id} -> image {ann.get('image_id')}")
            continue
        if ann.get("category_id") not in id_map:
            report.add("annotations of unknown categories", f"{ann_id}: {ann.get('category_id')}")
            continue
        x, y, w, h = _bbox_xywh(ann, json_file)
        if not (math.isfinite(x + y + w + h) and w > 0 and h > 0):
            report.add("degenerate boxes dropped", f"{ann_id}: {[x, y, w, h]}")
            continue
        width, height = int(image["width"]), int(image["height"])
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            report.add("boxes outside their image dropped", f"{ann_id}: {[x, y, w, h]}")
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            report.add("boxes clipped to their image", f"{ann_id}")
        record = {
            "bbox": [x1, y1, x2, y2],
            "category_id": id_map[ann["category_id"]],
            "iscrowd": ann.get("iscrowd", 0),
        }
        if masks:
            record["segmentation"] = _checked_segmentation(ann, width, height, json_file, report)
        anns_per_image.setdefault(image["id"], []).append(record)
    dicts = [
        {
            "file_name": str(_image_file_name(image, image_root, json_file)),
            "height": int(image["height"]),
            "width": int(image["width"]),
            "image_id": image_id,
            "annotations": anns_per_image.get(image_id, []),
        }
        for image_id, image in images.items()
    ]
    return dicts, report


def _check_image_files(dicts: list[dict[str, Any]], report: _Report) -> list[dict[str, Any]]:
    """Drop (and report by path) images that are missing, unreadable or of another size."""
    kept = []
    for d in dicts:
        path = d["file_name"]
        try:
            width, height = image_size(path)
        except InputFileNotFoundError:
            report.add("missing images dropped", path)
            continue
        except DataError as exc:  # undecodable, zero-size or a decompression bomb
            report.add("unreadable images dropped", f"{path}: {exc}")
            continue
        if (width, height) != (d["width"], d["height"]):
            report.add(
                "images whose size disagrees with the json dropped",
                f"{path} is {width}x{height}, json {d['width']}x{d['height']}",
            )
            continue
        kept.append(d)
    return kept


def load_coco_json(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    dataset_name: str | None = None,
    env_hint: str | None = None,
    check_images: bool | None = None,
    masks: bool = False,
) -> tuple[list[dict[str, Any]], DetectionMetadata]:
    """Read a COCO- or LVIS-format instances json, checking it once (summary in the log).

    Dropped, with their count and a few examples in one warning: annotations whose ``image_id``
    is not among the images or whose ``category_id`` is not among the categories, boxes with a
    non-positive or non-finite width/height, boxes entirely outside their image, and (when
    ``check_images``) images that are missing, unreadable or whose size disagrees with the
    json. Boxes partly outside their image are clipped to it (counted too). Keypoints are not
    loaded; segmentations only with ``masks`` (each annotation then has ``segmentation``:
    polygons, an RLE dict, or None when it has no usable mask, see
    :func:`decode_segmentation`).

    Args:
        json_file: the annotation file.
        image_root: folder the image ``file_name`` (or LVIS ``coco_url`` tail) is relative to.
        dataset_name: used in messages.
        env_hint: appended to "not found" errors (e.g. which environment variable to set).
        check_images: read every image header (existence, size); default: when the dataset has
            at most :data:`IMAGE_CHECK_LIMIT` images (the loader checks each image it reads).
        masks: also load and check the segmentations (empty ones and polygons outside the
            image are counted in the summary; an RLE of another size is an error).

    Returns:
        ``(dataset_dicts, metadata)``; dataset dicts are in the json's image order.

    Raises:
        InputFileNotFoundError: the json or the image root does not exist.
        DataError: the json is not valid, has no ``images`` / ``categories``, an image record
            lacks an id or a positive size, or an annotation's bbox is not 4 numbers.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    what = f"dataset '{dataset_name}'" if dataset_name else "dataset"
    hint = f" {env_hint}" if env_hint else ""
    if not json_file.is_file():
        raise InputFileNotFoundError(f"{what}: annotation file not found: {json_file}.{hint}")
    if not image_root.is_dir():
        raise InputFileNotFoundError(f"{what}: image folder not found: {image_root}.{hint}")
    with open(json_file, "rb") as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{what}: {json_file} is not valid json: {e}") from e
    if not isinstance(data, dict) or not data.get("images") or not data.get("categories"):
        raise DataError(
            f"{what}: {json_file} has no images or no categories; expected a COCO-format "
            "instances file with 'images', 'annotations' and 'categories'"
        )

    bad = [
        c for c in data["categories"] if not isinstance(c, dict) or "id" not in c or "name" not in c
    ]
    if bad:
        raise DataError(f"{what}: {json_file}: category {bad[0]!r} lacks an 'id' or a 'name'")
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

    dataset_dicts, report = _build_records(data, id_map, image_root, json_file, masks=masks)
    if check_images is None:
        check_images = len(dataset_dicts) <= IMAGE_CHECK_LIMIT
    if check_images:
        dataset_dicts = _check_image_files(dataset_dicts, report)
    report.log(what, json_file, dataset_dicts, len(categories), images_checked=check_images)
    return dataset_dicts, metadata
