"""COCO box AP (and mask AP) with pycocotools, gathered across processes.

Usage (the detectron2 evaluator protocol)::

    evaluator = COCOEvaluator("coco_2017_val", output_dir="output/inference")
    evaluator.reset()
    for inputs in loader:
        evaluator.process(inputs, model(inputs))
    metrics = evaluator.evaluate()  # {"bbox/AP": 45.1, "bbox/AP50": ..., "bbox/AP-person": ...}

Predictions are per-image dicts ``{"boxes": (n, 4) xyxy in ORIGINAL image pixels, "scores": (n,),
"labels": (n,) contiguous class ids}`` (a dict wrapped as ``{"instances": {...}}`` is accepted
too). They are converted to COCO results (xywh, json category ids), gathered on the main process
with :func:`diffvision.utils.comm.all_gather`, written to ``coco_instances_results.json`` and
scored with ``COCOeval`` (``maxDets`` 1/10/100, as detectron2's evaluator; every prediction is
submitted). AP values are percentages; a metric without ground truth (e.g. APl when there are
no large objects) is NaN.

After scoring, a per-class table (AP and AP50) goes to the log and, with ``output_dir``, to
``<dataset>_per_class.csv``, and the precision-recall curves (all classes, worst classes) to
``<dataset>_pr_curves.png`` (:mod:`diffvision.evaluation.reports`).

Instance segmentation (``iou_types=("bbox", "segm")``): predictions also carry ``masks`` (n, H, W)
bool at the original size, stored as compressed RLE; ``segm/AP``, ... are scored on them (the
box is left out of a mask result, so that pycocotools takes the area from the mask, as
detectron2's evaluator does).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffvision.data.catalog import get_detection_dataset, missing_data_hint
from diffvision.errors import DataError
from diffvision.evaluation.reports import (
    coco_per_class,
    format_table,
    plot_pr_curves,
    report_file,
    write_csv,
)
from diffvision.utils import comm

__all__ = [
    "COCOEvaluator",
    "demo_json_to_coco_results",
    "instances_to_coco_results",
    "masks_to_rle",
    "resolve_json_file",
    "results_for",
]

logger = logging.getLogger(__name__)

_COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def resolve_json_file(dataset: str | os.PathLike) -> Path:
    """Annotation json of a registered dataset name, or ``dataset`` itself if it is a json path."""
    if str(dataset).endswith(".json") or os.path.isfile(dataset):
        path = Path(dataset)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        return path
    path = get_detection_dataset(str(dataset)).json_file
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file of dataset '{dataset}' not found: {path}. {missing_data_hint()}"
        )
    return path


def _unwrap(output: dict[str, Any]) -> dict[str, Any]:
    return output["instances"] if "instances" in output else output


def masks_to_rle(masks: Any) -> list[dict[str, Any]]:
    """(K, H, W) bool masks (tensor or array) -> COCO compressed RLEs ``{"size": [H, W],
    "counts": str}`` (pycocotools' encoding with ``counts`` decoded to ASCII: JSON-ready, and
    what ``loadRes`` and ``pycocotools.mask.decode`` take)."""
    from pycocotools import mask as mask_utils

    masks = torch.as_tensor(masks).detach().cpu().bool().numpy()
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def instances_to_coco_results(
    output: dict[str, Any], *, image_id: int, contiguous_to_dataset_id: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """Convert one image's predictions to COCO result entries.

    Args:
        output: ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,) (tensors or arrays).
        image_id: the json image id.
        contiguous_to_dataset_id: label -> json category id (identity if None).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, each with
        ``segmentation`` (compressed RLE, ``counts`` a str) when ``output`` has ``masks``.
    """
    output = _unwrap(output)
    boxes = torch.as_tensor(output["boxes"]).detach().cpu().double().reshape(-1, 4)
    scores = torch.as_tensor(output["scores"]).detach().cpu().double().reshape(-1).tolist()
    labels = torch.as_tensor(output["labels"]).detach().cpu().reshape(-1).tolist()
    boxes[:, 2:] -= boxes[:, :2]
    rles = masks_to_rle(output["masks"]) if output.get("masks") is not None else None
    results = []
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
        category = contiguous_to_dataset_id[label] if contiguous_to_dataset_id else label
        result = {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
        if rles is not None:
            result["segmentation"] = rles[i]
        results.append(result)
    return results


def demo_json_to_coco_results(
    detections: dict[str, Any], annotations: dict[str, Any]
) -> list[dict[str, Any]]:
    """COCO results (``loadRes`` / ``COCOeval`` input) from a ``tools/demo.py --json`` file.

    Images are matched by file name (the base name, so ``--input photos/`` and a json listing
    ``train2017/a.jpg`` agree), categories by name. Usage::

        demo = json.load(open("detections.json"))
        gt = json.load(open("instances_val.json"))
        json.dump(demo_json_to_coco_results(demo, gt), open("results.json", "w"))

    Args:
        detections: the parsed ``--json`` file.
        annotations: the parsed COCO annotation json (``images``, ``categories``).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, with the
        detection's ``segmentation`` where the demo wrote one (a mask model).

    Raises:
        DataError: an image of the detections the annotation file does not hold, or a category
            name it does not know.
    """
    image_ids = {Path(im["file_name"]).name: im["id"] for im in annotations["images"]}
    category_ids = {c["name"]: c["id"] for c in annotations["categories"]}
    results = []
    for record in detections["images"]:
        if "detections" not in record:
            continue  # an input the demo could not read
        name = Path(record["file_name"]).name
        if name not in image_ids:
            raise DataError(f"{record['file_name']}: no image of that file name in the annotations")
        for det in record["detections"]:
            if det["category_name"] not in category_ids:
                raise DataError(
                    f"{record['file_name']}: category {det['category_name']!r} is not among the "
                    f"annotations' categories ({', '.join(list(category_ids)[:10])}, ...)"
                )
            results.append({
                "image_id": image_ids[name],
                "category_id": category_ids[det["category_name"]],
                "bbox": list(det["bbox"]),
                "score": det["score"],
            })  # fmt: skip
            if "segmentation" in det:  # a DiffusionInst demo's mask (COCO RLE)
                results[-1]["segmentation"] = det["segmentation"]
    return results


def results_for(results: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """The entries scored for ``iou_type``: masks without their box for ``segm`` (the area is
    then the mask's), boxes without their mask for ``bbox``."""
    drop = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: v for k, v in r.items() if k != drop} for r in results]


class COCOEvaluator:
    """Box AP on a COCO-format dataset.

    Args:
        dataset: registered dataset name (``coco_2017_val``, ``toy_detection_val``, a custom
            name) or the path of a COCO-format json.
        output_dir: where ``coco_instances_results.json`` is written (nothing written if None).
        distributed: gather predictions from every process; only the main process evaluates
            and the others return ``{}``. With False each process evaluates what it saw.
        iou_types: ``("bbox",)``, or ``("bbox", "segm")`` for predictions with ``masks``.
    """

    results_file_name = "coco_instances_results.json"

    def __init__(
        self,
        dataset: str | os.PathLike,
        output_dir: str | os.PathLike | None = None,
        *,
        distributed: bool = True,
        iou_types: tuple[str, ...] = ("bbox",),
    ) -> None:
        bad = [t for t in iou_types if t not in ("bbox", "segm")]
        if bad or not iou_types:
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {iou_types!r}")
        self.iou_types = tuple(iou_types)
        self.json_file = resolve_json_file(dataset)
        self.dataset_name = str(dataset)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.distributed = distributed
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget the predictions processed so far."""
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """Store the predictions of one batch.

        Args:
            inputs: batch dicts with ``image_id``.
            outputs: per-image predictions (see the module docstring), same order as inputs.
        """
        for inp, out in zip(inputs, outputs):
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    # contiguous labels here; json ids are attached on the main process
                    "instances": instances_to_coco_results(out, image_id=inp["image_id"]),
                }
            )

    def _gathered(self) -> list[dict[str, Any]] | None:
        if not self.distributed:
            return self._predictions
        comm.synchronize()
        gathered = comm.all_gather(self._predictions)
        if not comm.is_main_process():
            return None
        return [p for rank_predictions in gathered for p in rank_predictions]

    def evaluate(self) -> dict[str, float]:
        """Gather, write the results json, and score.

        Returns:
            ``bbox/AP, bbox/AP50, bbox/AP75, bbox/APs, bbox/APm, bbox/APl`` and
            ``bbox/AP-<class name>`` in percent on the main process; ``{}`` elsewhere.
        """
        predictions = self._gathered()
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("%s: no images were processed; nothing to evaluate", self.dataset_name)
            return {}
        gt = self._load_ground_truth()
        id_map = dict(enumerate(self._sorted_category_ids(gt)))
        results = []
        for p in predictions:
            for r in p["instances"]:
                results.append({**r, "category_id": id_map[r["category_id"]]})
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / self.results_file_name
            with open(path, "w") as f:
                json.dump(results, f)
            logger.info("Wrote %d detections to %s", len(results), path)
        image_ids = sorted({p["image_id"] for p in predictions})
        metrics = {}
        for iou_type in self.iou_types:
            scored = self._score(gt, results_for(results, iou_type), image_ids, iou_type)
            logger.info(
                "%s %s AP (%d images): %s",
                self.dataset_name,
                iou_type,
                len(image_ids),
                ", ".join(f"{k}={v:.2f}" for k, v in scored.items() if "-" not in k),
            )
            metrics.update(scored)
        return metrics

    # -- backend specific ------------------------------------------------------------------

    def _load_ground_truth(self) -> Any:
        from pycocotools.coco import COCO

        with open(self.json_file) as f:
            data = json.load(f)
        # Custom datasets often omit these; COCOeval needs them.
        for ann in data.get("annotations", []):
            ann.setdefault("iscrowd", 0)
            if "area" not in ann:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    @staticmethod
    def _sorted_category_ids(gt: Any) -> list[int]:
        return sorted(gt.getCatIds())

    def _report(self, precision: np.ndarray, class_names: list[str], iou_type: str) -> None:
        """Per-class AP / AP50 table to the log (and CSV), PR curves to a PNG (with
        ``output_dir``), from the accumulated ``precision`` array."""
        rows = coco_per_class(precision, class_names)
        header = ("class", "AP", "AP50")
        what = "box" if iou_type == "bbox" else "mask"
        logger.info("%s per-class %s AP:\n%s", self.dataset_name, what, format_table(header, rows))
        if self.output_dir is None:
            return
        suffix = "" if iou_type == "bbox" else f"{iou_type}_"  # the box files keep their names
        csv_file = report_file(self.output_dir, self.dataset_name, f"{suffix}per_class.csv")
        csv_path = write_csv(csv_file, header, rows)
        png_path = plot_pr_curves(
            precision,
            class_names,
            report_file(self.output_dir, self.dataset_name, f"{suffix}pr_curves.png"),
            title=f"{self.dataset_name} {what} precision-recall",
        )
        logger.info("Wrote %s and %s", csv_path, png_path)

    def _score(
        self, gt: Any, results: list[dict], image_ids: list[int], iou_type: str = "bbox"
    ) -> dict[str, float]:
        from pycocotools.cocoeval import COCOeval

        class_names = [gt.cats[c]["name"] for c in self._sorted_category_ids(gt)]
        if not results:
            logger.warning("%s: no predictions; all AP are 0", self.dataset_name)
            metrics = {f"{iou_type}/{m}": 0.0 for m in _COCO_METRICS}
            metrics.update({f"{iou_type}/AP-{name}": 0.0 for name in class_names})
            return metrics
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dt = gt.loadRes(copy.deepcopy(results))
            coco_eval = COCOeval(gt, dt, iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.info("COCOeval:\n%s", buf.getvalue())
        metrics = {
            f"{iou_type}/{m}": float(s * 100) if s >= 0 else float("nan")
            for m, s in zip(_COCO_METRICS, coco_eval.stats)
        }
        # precision: (iou thresholds, recall thresholds, classes, area ranges, max dets)
        precision = coco_eval.eval["precision"]
        for name, ap, _ in coco_per_class(precision, class_names):
            metrics[f"{iou_type}/AP-{name}"] = ap
        self._report(precision, class_names, iou_type)
        return metrics
