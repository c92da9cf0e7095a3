"""Config -> DiffusionInst data: DiffusionDet's loaders with instance masks, and evaluators that
score masks (COCO ``segm`` and ``bbox`` with pycocotools, LVIS ``segm`` and ``bbox`` with lvis).

Datasets need ``segmentation`` in their json (polygons or RLE, COCO format), builtin
(``coco_2017_*``, ``lvis_v1_*``, the generated ``toy_instances_*``) or declared with
``DATASETS.CUSTOM`` entries ``"name:json_file:image_root"`` as for DiffusionDet. Annotations without
a usable segmentation still train the boxes and are counted in the loading summary; an RLE whose
size is not its image's is an error naming the annotation.
"""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.data.catalog import get_detection_dataset
from diffvision.evaluation.coco_evaluation import COCOEvaluator
from diffvision.evaluation.lvis_evaluation import LVISEvaluator
from projects.detection.data import build_detection_train_loader, register_custom_datasets

__all__ = ["build_instance_evaluator", "build_instance_train_loader"]

IOU_TYPES = ("bbox", "segm")


def build_instance_train_loader(cfg: CfgNode, *, start_iter: int = 0):
    """DiffusionDet's training loader with ``gt_masks`` / ``gt_mask_valid`` in the instances
    (masks through the same flips, resizes and crops as the image and boxes)."""
    return build_detection_train_loader(cfg, start_iter=start_iter, masks=True)


def build_instance_evaluator(cfg: CfgNode, dataset_name: str) -> COCOEvaluator:
    """COCO (or, for LVIS-type datasets, LVIS) evaluator of boxes and masks."""
    register_custom_datasets(cfg)
    if get_detection_dataset(dataset_name).evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, cfg.OUTPUT_DIR, iou_types=IOU_TYPES)
    return COCOEvaluator(dataset_name, cfg.OUTPUT_DIR, iou_types=IOU_TYPES)
