"""What an evaluation leaves for a reader: per-class tables (log + CSV) and precision-recall curves.

- :func:`format_table` lays rows out as an aligned text table for the log;
- :func:`mean_std` and :func:`markdown_table` write the experiments' tables (a metric over seeds
  as ``mean ± std``, one markdown row per setting);
- :func:`write_csv` writes the same rows as CSV (``OUTPUT_DIR/<dataset>_per_class.csv``);
- :func:`coco_per_class` reads per-class AP and AP50 from COCOeval's / LVISEval's accumulated
  ``precision`` array;
- :func:`plot_pr_curves` draws the precision-recall curves (all classes and the worst ones) into a
  PNG with matplotlib's non-interactive Agg backend.

COCO's ``precision`` array (``COCOeval.accumulate``, pycocotools ``cocoeval.py``) has shape
``(T, R, K, A, M)``: IoU thresholds 0.50:0.05:0.95, the 101 recall points 0:0.01:1, classes, area
ranges (index 0 = all) and max-detection settings (index -1 = 100); LVISEval's has ``(T, R, K, A)``
(max 300 detections). An entry of -1 marks a class without ground truth. A class's AP is the mean
over the valid entries of ``precision[:, :, k, 0]``, its AP50 the mean over ``precision[0, :, k,
0]`` (the summary's definitions).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "coco_per_class",
    "format_table",
    "markdown_table",
    "mean_std",
    "plot_pr_curves",
    "report_file",
    "write_csv",
]


def report_file(output_dir: str | os.PathLike, dataset: str, suffix: str) -> Path:
    """``output_dir/<dataset>_<suffix>``; a dataset given as a json path is named by its stem."""
    name = Path(dataset).stem if str(dataset).endswith(".json") else str(dataset)
    return Path(output_dir) / f"{name}_{suffix}"


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Rows as an aligned text table (floats with 2 decimals), header underlined."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mean_std(values: Sequence[float | None], digits: int = 2) -> str:
    """``mean ± std`` of one metric over seeds (sample standard deviation, n - 1), ``digits``
    decimals; the value alone for one seed, ``-`` for none. ``None`` and NaN entries (a run with no
    value, e.g. a class absent from ground truth and prediction) are left out."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return "-"
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table: ``header`` then one line per row, cells written with ``str``."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """Write ``rows`` under ``header`` as CSV (floats at full precision, NaN as ``nan``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _class_curves(precision: np.ndarray) -> np.ndarray:
    """``(T, R, K)``: the all-areas, most-detections slice of a COCO/LVIS precision array."""
    precision = np.asarray(precision, dtype=np.float64)
    return precision[..., 0, -1] if precision.ndim == 5 else precision[..., 0]


def _valid_mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def coco_per_class(
    precision: np.ndarray, class_names: Sequence[str]
) -> list[tuple[str, float, float]]:
    """``[(name, AP, AP50), ...]`` in percent, one row per class (NaN: no ground truth).

    Args:
        precision: COCOeval's ``eval["precision"]`` ``(T, R, K, A, M)`` or LVISEval's
            ``(T, R, K, A)``.
        class_names: the K names in the array's class order.
    """
    curves = _class_curves(precision)
    if curves.shape[2] != len(class_names):
        raise ValueError(f"precision has {curves.shape[2]} classes, got {len(class_names)} names")
    return [
        (name, 100 * _valid_mean(curves[:, :, k]), 100 * _valid_mean(curves[0, :, k]))
        for k, name in enumerate(class_names)
    ]


def plot_pr_curves(
    precision: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    num_worst: int = 5,
    title: str = "",
) -> Path:
    """Precision-recall curves as a PNG: left, the mean over classes at IoU 0.50, 0.75 and
    averaged over 0.50:0.95; right, the ``num_worst`` classes of lowest AP (IoU-averaged).

    Precision at a recall point is averaged only over the classes (IoU thresholds) with ground
    truth; recall points are COCO's 101 (0:0.01:1).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = _class_curves(precision)
    num_t, num_r, _ = curves.shape
    recall = np.linspace(0.0, 1.0, num_r)
    masked = np.ma.masked_less(curves, 0)  # -1: no ground truth

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=80)
    for label, sel in (("IoU 0.50", masked[0]), ("IoU 0.75", masked[min(5, num_t - 1)]),
                       ("IoU 0.50:0.95", masked.mean(axis=0))):  # fmt: skip
        mean = sel.mean(axis=-1).filled(np.nan)
        left.plot(recall, mean, label=f"{label} (AP {100 * np.nanmean(mean):.1f})")
    left.set_title("all classes (mean)")
    rows = coco_per_class(precision, class_names)
    scored = [(ap, k) for k, (_, ap, _) in enumerate(rows) if not math.isnan(ap)]
    for ap, k in sorted(scored)[:num_worst]:
        right.plot(recall, masked[:, :, k].mean(axis=0).filled(np.nan),
                   label=f"{class_names[k]} (AP {ap:.1f})")  # fmt: skip
    right.set_title(f"worst {min(num_worst, len(scored))} classes (IoU 0.50:0.95)")
    for ax in (left, right):
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a class-less panel has no legend
            ax.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
