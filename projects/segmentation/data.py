"""Dataset names, label-fraction subsets and infinite training loaders for the segmentation tasks.

Dataset names (``DATASETS.TRAIN`` / ``DATASETS.TEST``):

- ``cityscapes_fine_sem_seg_{train,val}``: Cityscapes under ``$DIFFVISION_DATASETS/cityscapes``.
- ``toy_scenes_{train,val}``: generated on first use (:mod:`diffvision.data.toy_scenes`).
- ``toy_glyph_masks_{train,val}``: generated on first use (:mod:`diffvision.data.toy_glyph_masks`).
- any folder in the generic format (``images/``, ``masks/``, ``classes.json``), by path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffvision.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_SEM_SEG_SPLITS,
    get_cityscapes_sem_seg_records,
)
from diffvision.data.label_fraction import select_label_fraction, write_split_file
from diffvision.data.samplers import GlobalBatchLoader
from diffvision.data.seg_folder import (
    SemSegDataset,
    load_seg_folder,
    read_classes_json,
    read_mask,
)
from diffvision.data.toy_glyph_masks import ensure_toy_glyph_masks
from diffvision.data.toy_glyphs import GLYPH_SPLIT_SIZES
from diffvision.data.toy_scenes import TOY_SCENE_SPLITS, ensure_toy_scenes
from diffvision.errors import DataError, InputFileNotFoundError
from diffvision.utils import comm

__all__ = [
    "SegTestBatches",
    "build_seg_train_loader",
    "class_loss_weights",
    "collate_sem_seg",
    "get_sem_seg_dataset",
    "sem_seg_evaluator_kwargs",
    "labeled_subset",
    "train_records",
]

logger = logging.getLogger(__name__)


# Generated sets by name prefix: their splits, and the folder of a split (generated on first use).
_GENERATED_SETS = {
    "toy_scenes_": (
        tuple(TOY_SCENE_SPLITS),
        lambda split, toy_image_size: ensure_toy_scenes(split, image_size=toy_image_size),
    ),
    "toy_glyph_masks_": (
        tuple(GLYPH_SPLIT_SIZES),
        lambda split, toy_image_size: ensure_toy_glyph_masks(split),
    ),
}
_GENERATED_NAMES = ", ".join(
    f"{prefix}{{{','.join(splits)}}}" for prefix, (splits, _) in _GENERATED_SETS.items()
)


def _generated_split(name: str) -> tuple[str, str] | None:
    """``("toy_scenes_", "train")`` for ``toy_scenes_train`` (a generated split), else None."""
    for prefix, (splits, _) in _GENERATED_SETS.items():
        split = name.removeprefix(prefix)
        if split != name and split in splits:
            return prefix, split
    return None


def get_sem_seg_dataset(
    name: str, *, toy_image_size: int = 64, require_masks: bool = True
) -> tuple[list[dict], dict]:
    """Records and metadata of a named dataset or folder.

    Returns:
        ``(records, meta)`` with ``meta = {"classes", "palette", "ignore_label"}``.

    Raises:
        FileNotFoundError: an unknown name that is not an existing folder.
    """
    if name in CITYSCAPES_SEM_SEG_SPLITS:
        meta = {
            "classes": list(CITYSCAPES_CLASSES),
            "palette": CITYSCAPES_PALETTE,
            "ignore_label": 255,
        }
        return get_cityscapes_sem_seg_records(name), meta
    generated = _generated_split(name)
    if generated is not None:
        prefix, split = generated
        folder = _GENERATED_SETS[prefix][1](split, toy_image_size)
    else:
        folder = Path(name)
        if not folder.is_dir():
            raise InputFileNotFoundError(
                f"dataset {name!r} is neither a known name (cityscapes_fine_sem_seg_*, "
                f"{_GENERATED_NAMES}) nor a folder"
            )
    return load_seg_folder(folder, require_masks=require_masks), read_classes_json(
        folder / "classes.json"
    )


def check_sem_seg_dataset_files(name: str) -> None:
    """A named split or folder exists, without reading it (Cityscapes: its ``leftImg8bit``
    folder; generated toy scenes always pass).

    Raises:
        InputFileNotFoundError: an unknown name that is not an existing folder.
    """
    if name in CITYSCAPES_SEM_SEG_SPLITS or _generated_split(name) is not None:
        return
    if not Path(name).is_dir():
        what = "a file, expected a folder" if Path(name).exists() else "not a known name or folder"
        raise InputFileNotFoundError(
            f"dataset {name!r} is {what} (known: cityscapes_fine_sem_seg_*, "
            f"{_GENERATED_NAMES}, or a folder with images/ and masks/)"
        )


def check_seg_inputs(cfg) -> None:
    """``Task.check_inputs`` of the segmentation tasks: every ``DATASETS.TRAIN`` / ``TEST``."""
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        check_sem_seg_dataset_files(str(name))


def labeled_subset(
    records: Sequence[dict],
    *,
    fraction: str | int,
    seed: int,
    split_file: str = "",
    output_dir: str | Path | None = None,
) -> list[dict]:
    """Apply a label fraction and record the chosen images in ``output_dir/labeled_split.txt``."""
    indices = select_label_fraction(
        [r["file_name"] for r in records],
        fraction=fraction,
        seed=seed,
        split_file=split_file or None,
    )
    subset = [records[i] for i in indices]
    logger.info("Label fraction %s: %d of %d images", fraction, len(subset), len(records))
    if output_dir is not None:
        write_split_file(Path(output_dir) / "labeled_split.txt", [r["file_name"] for r in subset])
    return subset


def train_records(cfg, *, labeled: bool = True) -> list[dict]:
    """Records of every ``DATASETS.TRAIN`` dataset; when ``labeled``, only the label fraction
    chosen by ``SEG.LABEL_COUNT``/``LABEL_FRACTION``/``SPLIT_FILE`` (recorded in OUTPUT_DIR)."""
    records = []
    for name in cfg.DATASETS.TRAIN:
        records += get_sem_seg_dataset(
            name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE, require_masks=labeled
        )[0]
    if not records:
        raise DataError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} holds no images.")
    if not labeled:
        return records
    return labeled_subset(
        records,
        fraction=cfg.SEG.LABEL_COUNT or cfg.SEG.LABEL_FRACTION,
        seed=cfg.SEG.FRACTION_SEED,
        split_file=cfg.SEG.SPLIT_FILE,
        output_dir=cfg.OUTPUT_DIR if comm.is_main_process() else None,
    )


def class_loss_weights(
    records: Sequence[dict], *, num_classes: int, ignore_label: int, power: float
) -> torch.Tensor:
    """Cross-entropy class weights ``(C,)`` float32 from the labeled masks' pixel counts.

    With ``f_c`` the share of class ``c`` among the labeled (not ignored) pixels,
    ``w_c = f_c ** -power / sum_k f_k ** (1 - power)``, so that ``sum_c f_c w_c = 1``: the average
    labeled pixel keeps weight 1 and ``power = 0`` gives ``w = 1`` (plain cross-entropy). A class
    absent from the masks gets the largest weight of the present ones (it has no pixels to weigh
    in this set, and keeps a rare class's weight should the labels change).

    Raises:
        DataError: no labeled pixel in ``records``.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for record in records:
        mask = read_mask(record["sem_seg_file_name"], label_lut=record.get("label_lut"))
        mask = mask[(mask != ignore_label) & (mask < num_classes)]
        counts += torch.bincount(mask.flatten(), minlength=num_classes).double()
    if counts.sum() == 0:
        raise DataError("the labeled training masks hold no pixel of a class: nothing to weigh")
    share = counts / counts.sum()
    present = share > 0
    weights = torch.zeros_like(share)
    weights[present] = share[present] ** -power / (share[present] ** (1 - power)).sum()
    weights[~present] = weights[present].max()
    logger.info(
        "Class weights (power %g): %s", power, " ".join(f"{w:.2f}" for w in weights.tolist())
    )
    return weights.float()


def collate_sem_seg(items: list[dict], seeds: list[int] | None = None) -> dict:
    """Stack same-sized items into ``{"image": (B,3,H,W) uint8, "sem_seg": (B,H,W), "file_name":
    [...], "seed": (B,) int64}`` (``seed`` when given: each sample's noise-draw seed)."""
    batch = {"image": torch.stack([it["image"] for it in items])}
    if all("sem_seg" in it for it in items):
        batch["sem_seg"] = torch.stack([it["sem_seg"] for it in items])
    batch["file_name"] = [it["file_name"] for it in items]
    if seeds is not None:
        batch["seed"] = torch.as_tensor(seeds, dtype=torch.int64)
    return batch


def build_seg_train_loader(
    dataset: Dataset,
    *,
    seed: int,
    global_batch_size: int,
    start_iter: int,
    num_workers: int,
    class_weights: torch.Tensor | None = None,
) -> GlobalBatchLoader:
    """This rank's part of every global batch of ``dataset`` from ``start_iter`` on; crops,
    flips and noise seeds depend on ``(seed, iteration, position)`` only. ``class_weights``
    ``(C,)`` (:func:`class_loss_weights`), when given, rides in every batch as
    ``"class_weights"`` for the loss."""
    collate = collate_sem_seg
    if class_weights is not None:

        def collate(items: list[dict], seeds: list[int] | None = None) -> dict:
            return {**collate_sem_seg(items, seeds), "class_weights": class_weights}

    return GlobalBatchLoader(
        dataset,
        seed=seed,
        global_batch_size=global_batch_size,
        start_iter=start_iter,
        collate=collate,
        num_workers=num_workers,
    )


class SegTestBatches:
    """This rank's share (every ``world_size``-th record) of a test set, one-image batches
    ``[{"image": (3, H, W) uint8, "sem_seg": (H, W), "file_name"}]``."""

    def __init__(self, records: Sequence[dict]) -> None:
        self.records = list(records)[comm.get_rank() :: comm.get_world_size()]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[list[dict]]:
        for item in SemSegDataset(self.records):
            yield [item]


def sem_seg_evaluator_kwargs(cfg, dataset_name: str) -> dict:
    """The :class:`~diffvision.evaluation.sem_seg.SemSegEvaluator` arguments of both
    segmentation tasks for ``dataset_name`` (classes, palette, overlays under
    ``OUTPUT_DIR/vis/<name>`` on the main process)."""
    _, meta = get_sem_seg_dataset(dataset_name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
    vis_dir = Path(cfg.OUTPUT_DIR) / "vis" / Path(dataset_name).name
    return {
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        "class_names": meta["classes"],
        "palette": meta.get("palette"),
        "output_dir": vis_dir if comm.is_main_process() else None,
        "num_visualizations": cfg.SEG.NUM_VIS,
        "report_dir": cfg.OUTPUT_DIR if comm.is_main_process() else None,
        "dataset_name": Path(dataset_name).name,
    }
