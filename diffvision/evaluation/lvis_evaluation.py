"""LVIS box (and mask) AP (with APr / APc / APf) using the ``lvis`` package.

Same protocol and prediction format as :class:`~.coco_evaluation.COCOEvaluator`; results go to
``lvis_instances_results.json``, the per-class table and precision-recall curves as for COCO.
``LVISResults(max_dets=300)`` keeps the top 300 detections per image by score, as detectron2's
LVIS evaluator (``detectron2/evaluation/lvis_evaluation.py``).

The ``lvis`` package (0.5.3) still uses ``np.float``, which NumPy 2 removed; evaluation runs
inside :func:`numpy_float_alias`, which restores the alias (to the builtin ``float``, what it
always meant) for the duration of the call only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from diffvision.evaluation.coco_evaluation import COCOEvaluator

__all__ = ["LVISEvaluator", "numpy_float_alias"]

logger = logging.getLogger(__name__)

_LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


@contextlib.contextmanager
def numpy_float_alias() -> Iterator[None]:
    """Temporarily define ``np.float = float`` if this NumPy lacks it (NumPy >= 1.24)."""
    if "float" in np.__dict__:
        yield
        return
    np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del np.float


class LVISEvaluator(COCOEvaluator):
    """Box AP on an LVIS-format dataset (``lvis_v1_val`` or an LVIS-format json).

    Args:
        dataset: registered dataset name or LVIS json path.
        output_dir: where ``lvis_instances_results.json`` is written.
        distributed: see :class:`COCOEvaluator`.
        max_dets_per_image: detections kept per image by score (LVIS standard 300).
    """

    results_file_name = "lvis_instances_results.json"

    def __init__(
        self,
        dataset,
        output_dir=None,
        *,
        distributed=True,
        max_dets_per_image=300,
        iou_types=("bbox",),
    ):
        super().__init__(dataset, output_dir, distributed=distributed, iou_types=iou_types)
        self.max_dets_per_image = max_dets_per_image

    def _load_ground_truth(self) -> Any:
        from lvis import LVIS

        return LVIS(str(self.json_file))

    @staticmethod
    def _sorted_category_ids(gt: Any) -> list[int]:
        return sorted(gt.get_cat_ids())

    def _score(
        self, gt: Any, results: list[dict], image_ids: list[int], iou_type: str = "bbox"
    ) -> dict[str, float]:
        from lvis import LVISEval, LVISResults

        if not results:
            logger.warning("%s: no predictions; all AP are 0", self.dataset_name)
            return {f"{iou_type}/{m}": 0.0 for m in _LVIS_METRICS}
        with numpy_float_alias(), warnings.catch_warnings():
            # lvis calls the deprecated Logger.warn on in-memory results
            warnings.simplefilter("ignore", DeprecationWarning)
            dt = LVISResults(gt, copy.deepcopy(results), max_dets=self.max_dets_per_image)
            lvis_eval = LVISEval(gt, dt, iou_type)
            lvis_eval.params.img_ids = image_ids
            lvis_eval.run()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            lvis_eval.print_results()
        logger.info("LVISEval:\n%s", buf.getvalue())
        stats = lvis_eval.get_results()
        ids = self._sorted_category_ids(gt)
        self._report(lvis_eval.eval["precision"], [gt.cats[c]["name"] for c in ids], iou_type)
        return {
            f"{iou_type}/{m}": float(stats[m] * 100) if stats[m] >= 0 else float("nan")
            for m in _LVIS_METRICS
        }
